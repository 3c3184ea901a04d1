package llq

import (
	"net/netip"
	"strings"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"
)

// askTopic resolves a topic's question through b: as an ordinary query
// would be answered, or for a topic of every record at a name (key.all),
// through resolveAll.
func askTopic(b *backend, key topicKey, q dns.Question, client netip.AddrPort) resolution {
	if !key.all {
		return b.lookupFull(q, client)
	}
	if b.started != nil { // as lookup: not before the plugins below have started
		select {
		case <-b.started:
		case <-time.After(resolveTimeout):
			return resolution{rcode: -1, unready: true}
		}
	}
	return resolveAll(b.handler, q.Name, client)
}

// resolveAll returns every record at name, whatever its type. CoreDNS
// backends cannot be asked for that: file, etcd and kubernetes answer a
// query of type ANY with nothing (RFC 8482 lets them), and none lists the
// types it holds at a name. So llq asks the chain, as an ordinary client
// would, for each record type miekg/dns knows (every type IANA has
// assigned for data, not a short list), in class IN, and keeps the
// records owned by name itself (a CNAME's target answers for it, but is
// not at the name). A name the backend says does not exist (NXDOMAIN) ends
// the sweep at the first question. ok is false when any question failed:
// failure is not change. Through the CoreDNS server, reached is the llq the
// first question passed, and a sweep that another block answers in part
// fails: a topic's answers come from one block.
func resolveAll(h plugin.Handler, name string, client netip.AddrPort) resolution {
	var out []dns.RR
	var reached *LLQ
	for i, t := range allTypes {
		res := resolveFull(h, dns.Question{Name: name, Qtype: t, Qclass: dns.ClassINET}, client)
		if i == 0 {
			reached = res.reached
		}
		if !res.ok || res.reached != reached {
			return resolution{rcode: res.rcode, reached: reached}
		}
		if res.rcode == dns.RcodeNameError {
			return resolution{ok: true, rcode: res.rcode, reached: reached}
		}
		for _, rr := range res.answers {
			if rr.Header().Rrtype == t && strings.EqualFold(rr.Header().Name, name) {
				out = append(out, rr)
			}
		}
	}
	return resolution{answers: out, ok: true, rcode: dns.RcodeSuccess, reached: reached}
}

// allTypes is every data type miekg/dns knows, in numeric order: no
// meta-types (OPT, TSIG...), no query types (ANY, AXFR...), no obsolete
// placeholders (NULL, NXT, MAILA...). The name's most likely types come
// first so that a missing name is found out early.
var allTypes = func() []uint16 {
	skip := map[uint16]bool{
		dns.TypeNone: true, dns.TypeOPT: true, dns.TypeTSIG: true, dns.TypeTKEY: true,
		dns.TypeANY: true, dns.TypeAXFR: true, dns.TypeIXFR: true, dns.TypeMAILA: true, dns.TypeMAILB: true,
		dns.TypeNULL: true, dns.TypeNXT: true, dns.TypeReserved: true, dns.TypeNXNAME: true,
	}
	out := []uint16{dns.TypeA, dns.TypeAAAA}
	for t := range dns.TypeToString {
		if !skip[t] && t != dns.TypeA && t != dns.TypeAAAA {
			out = append(out, t)
		}
	}
	rest := out[2:]
	for i := 1; i < len(rest); i++ { // insertion sort: a few dozen entries, once
		for j := i; j > 0 && rest[j] < rest[j-1]; j-- {
			rest[j], rest[j-1] = rest[j-1], rest[j]
		}
	}
	return out
}()
