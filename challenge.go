package llq

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// The challenge makes setup stateless: the LLQ ID handed out in a challenge is
// a MAC over the client's address and port, the question and a coarse epoch.
// Only a client that receives the challenge at that address can echo a valid
// ID, so spoofed setups cost one HMAC and no memory, and a duplicate setup in
// the same epoch gets the very same challenge back.
//
// Layout of the 64-bit ID: the top epochBits hold the epoch the challenge was
// issued in, the rest the truncated MAC.
const (
	epochLen  = 32 * time.Second
	epochBits = 20
	macBits   = 64 - epochBits
	epochMask = 1<<epochBits - 1
)

type challenger struct {
	pool sync.Pool // hash.Hash with the secret key
}

func newChallenger() *challenger {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return &challenger{pool: sync.Pool{New: func() any { return hmac.New(sha256.New, key) }}}
}

func epochOf(t time.Time) uint64 { return uint64(t.Unix()/int64(epochLen/time.Second)) & epochMask }

// id returns the challenge ID for a client and question in an epoch.
func (c *challenger) id(epoch uint64, client netip.AddrPort, q dns.Question) uint64 {
	h := c.pool.Get().(hash.Hash)
	h.Reset()
	var b [16 + 2 + 8 + 4]byte
	a16 := client.Addr().As16()
	copy(b[:16], a16[:])
	binary.BigEndian.PutUint16(b[16:], client.Port())
	binary.BigEndian.PutUint64(b[18:], epoch)
	binary.BigEndian.PutUint16(b[26:], q.Qtype)
	binary.BigEndian.PutUint16(b[28:], q.Qclass)
	h.Write(b[:])
	h.Write([]byte(strings.ToLower(q.Name)))
	var sum [sha256.Size]byte
	mac := binary.BigEndian.Uint64(h.Sum(sum[:0]))
	c.pool.Put(h)
	return epoch<<macBits | mac>>epochBits
}

// issue returns the challenge ID for a setup request received at now.
func (c *challenger) issue(now time.Time, client netip.AddrPort, q dns.Question) uint64 {
	return c.id(epochOf(now), client, q)
}

// valid reports whether id is a challenge this server issued to client for q
// no longer than maxAge ago. The RFC lets a client answer a challenge for as
// long as the lease it was granted, so maxAge is that lease.
func (c *challenger) valid(id uint64, now time.Time, maxAge time.Duration, client netip.AddrPort, q dns.Question) bool {
	epoch := id >> macBits
	age := (epochOf(now) - epoch) & epochMask
	if time.Duration(age)*epochLen > maxAge+epochLen {
		return false
	}
	return hmac.Equal(binary.BigEndian.AppendUint64(nil, c.id(epoch, client, q)), binary.BigEndian.AppendUint64(nil, id))
}
