package llq

import (
	"testing"

	"github.com/miekg/dns"
)

// subDomain must agree with dns.IsSubDomain, which it replaces on hot paths.
var subDomainNames = []string{
	".", "org.", "ORG.", "org", "example.org.", "Example.ORG.", "example.org",
	"www.example.org.", "wWw.eXample.org.", "xexample.org.", "x.xexample.org.",
	"a.b.c.example.org.", "example.com.", "www.example.com.", "org.example.",
	`a\.example.org.`, `example\.org.`, `a\\.example.org.`, "a..example.org.",
	".example.org.", "..", "", "a", "a.", "é.example.org.", "\xff.org.",
	"_dns-llq._udp.example.org.", "llq.example.org.", "*.example.org.",
}

func TestSubDomain(t *testing.T) {
	for _, p := range subDomainNames {
		for _, c := range subDomainNames {
			if p == "" || c == "" {
				continue // dns.IsSubDomain panics on empty names; none reach here
			}
			if got, want := subDomain(p, c), dns.IsSubDomain(p, c); got != want {
				t.Errorf("subDomain(%q, %q) = %v, dns.IsSubDomain says %v", p, c, got, want)
			}
		}
	}
}

func FuzzSubDomain(f *testing.F) {
	for _, p := range subDomainNames {
		f.Add(p, "www.example.org.")
		f.Add("example.org.", p)
	}
	f.Fuzz(func(t *testing.T, p, c string) {
		// dns.IsSubDomain is only defined for valid names; plainFQDN ones
		// are what the fast path sees.
		if !plainFQDN(p) || !plainFQDN(c) {
			return
		}
		if got, want := subDomain(p, c), dns.IsSubDomain(p, c); got != want {
			t.Errorf("subDomain(%q, %q) = %v, dns.IsSubDomain says %v", p, c, got, want)
		}
	})
}
