// Command coredns is CoreDNS with every in-tree plugin plus llq, placed just
// before cache so that LLQ queries never hit the cache and re-resolution can
// bypass it.
package main

import (
	"slices"

	"github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/core/plugin" // every in-tree plugin
	"github.com/coredns/coredns/coremain"

	_ "github.com/llqdns/llq"
)

func init() {
	d := slices.Clone(dnsserver.Directives)
	d = slices.Insert(d, slices.Index(d, "cache"), "llq")
	if err := dnsserver.SetDirectives(d); err != nil {
		panic(err)
	}
}

func main() { coremain.Run() }
