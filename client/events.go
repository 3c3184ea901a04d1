package client

import (
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
	ev.Added, ev.Removed = s.answers.apply(ev.Msg.Answer)
	s.deliverLocked(ev)
	return ev
}

// deliverLocked queues ev without ever blocking the reader, which serves
// every subscription on the socket: when the consumer has fallen a whole
// buffer behind, the oldest queued event makes room and is counted in
// Dropped. Nothing is lost from the answer set, which Answers still reports
// exactly, so a consumer that sees Dropped grow can resynchronise from it.
func (s *Subscription) deliverLocked(ev Event) {
	for {
		select {
		case s.events <- ev:
			return
		default:
		}
		select {
		case <-s.events:
			s.dropped++
		default:
		}
	}
}
