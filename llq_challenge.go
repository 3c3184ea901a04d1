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
	pool sync.Pool // *macState
}

// macState is an HMAC with the secret key and scratch space for its input
// and output. Byte slices handed to a hash.Hash escape, so arrays on the
// stack would cost three allocations per challenge; pooled, they cost none.
type macState struct {
	h   hash.Hash
	in  []byte
	sum [sha256.Size]byte
}

func newChallenger() *challenger {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return &challenger{pool: sync.Pool{New: func() any { return &macState{h: hmac.New(sha256.New, key)} }}}
}

func epochOf(t time.Time) uint64 { return uint64(t.Unix()/int64(epochLen/time.Second)) & epochMask }

// id returns the challenge ID for a client and question in an epoch.
func (c *challenger) id(epoch uint64, client netip.AddrPort, q dns.Question) uint64 {
	st := c.pool.Get().(*macState)
	st.h.Reset()
	a16 := client.Addr().As16()
	b := append(st.in[:0], a16[:]...)
	b = binary.BigEndian.AppendUint16(b, client.Port())
	b = binary.BigEndian.AppendUint64(b, epoch)
	b = binary.BigEndian.AppendUint16(b, q.Qtype)
	b = binary.BigEndian.AppendUint16(b, q.Qclass)
	b = append(b, strings.ToLower(q.Name)...)
	st.h.Write(b)
	mac := binary.BigEndian.Uint64(st.h.Sum(st.sum[:0]))
	st.in = b[:0]
	c.pool.Put(st)
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
	var want, got [8]byte
	binary.BigEndian.PutUint64(want[:], c.id(epoch, client, q))
	binary.BigEndian.PutUint64(got[:], id)
	return hmac.Equal(want[:], got[:])
}
