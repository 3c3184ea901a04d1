package client

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/miekg/dns"
)

var errTooManyRequests = errors.New("llq: every DNS message ID is in use by an outstanding request")

// maxAttempts is RFC 8764 5.2's limit on transmissions of one request.
const maxAttempts = 3

// exchange sends m to the server and returns the first reply with m's DNS ID,
// retransmitting the same bytes on RFC 8764 5.2's schedule: wait r after the
// first transmission, 2r after the second, 4r after the third (2 s, 4 s, 8 s
// by default). Keeping the ID across retransmissions lets a late reply to an
// earlier copy still count. step names the request in errors.
func (c *Client) exchange(ctx context.Context, m *dns.Msg, step string) (*dns.Msg, error) {
	ch := make(chan *dns.Msg, 1)
	if err := c.register(m, ch); err != nil {
		return nil, err
	}
	defer c.unregister(m.Id)

	b, err := m.Pack()
	if err != nil {
		return nil, err
	}

	if err := ctx.Err(); err != nil {
		return nil, err
	}
	start := time.Now()
	wait := c.opts.RetryInterval
	t := time.NewTimer(wait)
	defer t.Stop()
	for attempt := 1; ; attempt++ {
		if err := c.send(b); err != nil {
			return nil, err
		}
		t.Reset(wait)
		select {
		case r := <-ch:
			return r, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.done:
			return nil, c.closedErr()
		case <-t.C:
		}
		if attempt == maxAttempts {
			return nil, &NoReplyError{Server: c.server, Step: step, Attempts: attempt, Waited: time.Since(start)}
		}
		wait *= 2
	}
}

// register gives m a random DNS ID no other outstanding request uses, so
// that replies can be matched by ID alone.
func (c *Client) register(m *dns.Msg, ch chan *dns.Msg) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.done:
		if c.readErr != nil {
			return c.readErr
		}
		return ErrClosed
	default:
	}
	if len(c.pending) > 0xFFFF {
		return errTooManyRequests
	}
	for {
		id := uint16(rand.Uint32())
		if _, ok := c.pending[id]; !ok {
			m.Id = id
			c.pending[id] = ch
			return nil
		}
	}
}

func (c *Client) unregister(id uint16) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}
