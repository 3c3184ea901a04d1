package client

import (
	"hash/maphash"
	"net/netip"
	"time"

	"github.com/llqdns/llq/wire"
	"github.com/miekg/dns"
)

// Event is one event packet, as applied to the subscription's answer set.
type Event struct {
	Time time.Time // when the packet arrived
	// Added and Removed are the records this packet changed. A record the
	// set already held (or lacked) changes nothing, so a retransmitted event
	// arrives with both empty. Removed records are given as they were held,
	// with their TTL rather than 0xFFFFFFFF.
	Added, Removed []dns.RR
	Msg            *dns.Msg // the event packet
}

// maxEarly bounds the events held for a subscription whose ACK+Answers has
// not arrived yet. Beyond it events go unacknowledged, so the server sends
// them again later rather than the client silently losing them.
const maxEarly = 64

// event handles an event packet: route by LLQ ID, apply, acknowledge.
func (c *Client) event(m *dns.Msg, opts []*dns.EDNS0_LLQ, from netip.AddrPort) {
	now := time.Now()
	s := c.sub(opts[0].Id)
	if s == nil {
		// Not ours, or already terminated: an ack would tell the server
		// that someone still listens.
		return
	}
	ev, accepted, applied := s.onEvent(m, now)
	if !accepted {
		return
	}
	if c.opts.AckFilter == nil || c.opts.AckFilter(m) {
		c.ack(m, opts, from)
	}
	if applied && c.opts.OnEvent != nil {
		c.opts.OnEvent(s, ev)
	}
}

// ack answers an event the way Apple's client does: QR=1, the event's DNS
// ID and question, no records, and the LLQ option echoed with the lease as
// received. It goes back to where the event came from.
func (c *Client) ack(m *dns.Msg, opts []*dns.EDNS0_LLQ, to netip.AddrPort) {
	a := new(dns.Msg)
	a.Id = m.Id
	a.Response = true
	a.Opcode = m.Opcode
	a.Question = m.Question
	acks := make([]*dns.EDNS0_LLQ, 0, len(opts))
	for _, o := range opts {
		if o.Opcode == wire.OpEvent {
			acks = append(acks, wire.NewOption(wire.OpEvent, wire.NoError, o.Id, o.LeaseLife))
		}
	}
	wire.SetOptions(a, c.opts.UDPSize, acks...)
	b, err := a.Pack()
	if err != nil {
		return
	}
	if c.opts.OnPacket != nil {
		c.opts.OnPacket(Sent, to, b)
	}
	if c.opts.Drop != nil && c.opts.Drop(Sent, b) {
		return
	}
	c.conn.WriteToUDPAddrPort(b, to)
}

// onEvent applies m and queues the resulting Event. accepted is false when
// the event must not be acked; applied is false when it was only held back
// for a handshake in progress.
func (s *Subscription) onEvent(m *dns.Msg, now time.Time) (ev Event, accepted, applied bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case handshaking:
		if len(s.early) >= maxEarly {
			return ev, false, false
		}
		s.early = append(s.early, Event{Time: now, Msg: m})
		return ev, true, false
	case ended:
		return ev, false, false
	}
	return s.applyLocked(Event{Time: now, Msg: m}), true, true
}

func (s *Subscription) applyLocked(ev Event) Event {
	// A copy of a packet applied before is stale news: the network
	// duplicated it, and a later packet may have changed the same records
	// since. Applying it again would undo that change, and the server,
	// which forgot the packet once it was acked, would never repair it. It
	// is still acked and reported, as an event that changes nothing.
	if s.recent.seen(ev.Msg) {
		s.deliverLocked(ev)
		return ev
	}
	ev.Added, ev.Removed = s.answers.apply(ev.Msg.Answer)
	s.deliverLocked(ev)
	return ev
}

// recentPackets remembers the last few event packets of a subscription by
// a hash of their whole content, DNS ID included: a server sends every
// transmission, retransmissions too, under a fresh DNS ID, so only a copy
// made by the network matches.
type recentPackets struct {
	seed maphash.Seed
	hash [32]uint64
	next int
}

// seen reports whether m was seen lately, and remembers it.
func (r *recentPackets) seen(m *dns.Msg) bool {
	if r.seed == (maphash.Seed{}) {
		r.seed = maphash.MakeSeed()
	}
	h := maphash.String(r.seed, m.String())
	for _, x := range r.hash {
		if x == h {
			return true
		}
	}
	r.hash[r.next] = h
	r.next = (r.next + 1) % len(r.hash)
	return false
}
