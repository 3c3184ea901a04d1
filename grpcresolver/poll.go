package grpcresolver

import (
	"context"
	"fmt"
	"time"

	"github.com/llqdns/llq/client"
	"github.com/miekg/dns"
)

// queryTimeout bounds one plain query, all its tries included.
const queryTimeout = 5 * time.Second

// query asks the DNS server q, over UDP and then over TCP when the answer
// was truncated, and returns the answer section. NXDOMAIN is an empty
// answer, as it is for a subscription.
func query(ctx context.Context, server string, q dns.Question) ([]dns.RR, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	m := new(dns.Msg)
	m.SetQuestion(q.Name, q.Qtype)
	m.SetEdns0(client.DefaultUDPSize, false)

	c := &dns.Client{Net: "udp", UDPSize: client.DefaultUDPSize, Timeout: 2 * time.Second}
	r, _, err := c.ExchangeContext(ctx, m, server)
	if err == nil && r.Truncated {
		c = &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
		r, _, err = c.ExchangeContext(ctx, m, server)
	}
	if err != nil {
		return nil, fmt.Errorf("llq: %s %s via %s: %w", q.Name, dns.TypeToString[q.Qtype], server, err)
	}
	if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		return nil, fmt.Errorf("llq: %s %s via %s: %s", q.Name, dns.TypeToString[q.Qtype], server, dns.RcodeToString[r.Rcode])
	}
	return r.Answer, nil
}
