package grpcresolver

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestPluginDoesNotLinkResolver: grpc-go stays out of llq's plugin through
// this package. CoreDNS itself links grpc-go (its grpc plugin, etcd's
// client), so the check is on what llq adds: neither the plugin package
// nor cmd/coredns depends on the resolver, and the plugin package imports
// no grpc package itself.
func TestPluginDoesNotLinkResolver(t *testing.T) {
	const self = "github.com/llqdns/llq/grpcresolver"
	out, err := exec.Command("go", "list", "-deps", "github.com/llqdns/llq", "github.com/llqdns/llq/cmd/coredns").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/llqdns/llq/wire") {
		t.Fatalf("go list -deps did not list the plugin's own packages:\n%s", out)
	}
	if slices.Contains(deps, self) {
		t.Errorf("the plugin or cmd/coredns depends on %s", self)
	}
	out, err = exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, "github.com/llqdns/llq").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -f: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "google.golang.org/grpc") {
			t.Errorf("the plugin package imports %s", p)
		}
	}
}
