package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/llqdns/llq/wire"
)

// TestHelpAndUsage: help, asked for, goes to stdout with exit status 0;
// every usage error goes to stderr, says how to get help, and exits 2.
func TestHelpAndUsage(t *testing.T) {
	for _, args := range [][]string{
		{"-h"}, {"--help"}, {"help"},
		{"watch", "-h"}, {"watch", "x.org", "-help"}, {"bench", "-h"}, {"soak", "--help"},
	} {
		var out, errb lockedBuffer
		code := run(context.Background(), args, &out, &errb)
		if code != exitOK || !strings.Contains(out.String(), "usage: llq") || errb.String() != "" {
			t.Errorf("llq %s: exit %d, stdout %q, stderr %q; want the help on stdout and exit 0", strings.Join(args, " "), code, out.String(), errb.String())
		}
	}
	for _, args := range [][]string{
		{}, {"frobnicate"},
		{"watch"}, {"watch", "-bogus", "x.org"}, {"watch", "x.org", "A", "extra"}, {"watch", "x.org", "NOPE"},
		{"watch", "x.org", "-lease", "soon"}, {"watch", "x.org", "-udpsize", "100"},
		{"bench"}, {"bench", "@127.0.0.1", "-llqs", "many"}, {"bench", "@127.0.0.1", "@127.0.0.2"},
		{"soak"}, {"soak", "@127.0.0.1"}, {"soak", "@127.0.0.1", "-dns", "127.0.0.1:53", "-zone", "z", "-loss", "some"},
	} {
		var out, errb lockedBuffer
		code := run(context.Background(), args, &out, &errb)
		if code != exitUsage || out.String() != "" || !strings.Contains(errb.String(), "-h") {
			t.Errorf("llq %s: exit %d, stdout %q, stderr %q; want exit 2 and a pointer to -h on stderr", strings.Join(args, " "), code, out.String(), errb.String())
		}
	}
}

// TestSecondInterrupt: the first SIGINT terminates the LLQ cleanly, which
// waits for the server; a second one ends the process at once, before the
// terminate is ever sent again.
func TestSecondInterrupt(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "llq")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	p := newLLQPeer(t)
	cmd := exec.Command(bin, "watch", "www.example.org", "@"+p.addr.String(), "-retry", "1h")
	stderr := new(lockedBuffer)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	setup := p.recv()
	p.reply(setup, wire.OpSetup, 0, 7, 3600)
	cr := p.recv()
	p.reply(cr, wire.OpSetup, 0, 7, 3600)

	waitOutput(t, stderr, "LLQ 0x7 for")

	// The first interrupt: the terminate comes, and goes unanswered.
	cmd.Process.Signal(os.Interrupt)
	term := p.recv()
	if o := wire.Options(term.m); len(o) != 1 || o[0].Opcode != wire.OpRefresh || o[0].LeaseLife != 0 {
		t.Fatalf("want a terminate, got\n%s", term.m)
	}
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Exited() || ws.ExitStatus() != exitInterrupted {
		t.Fatalf("after the second interrupt: %v", err)
	}
	select {
	case pk := <-p.in:
		t.Errorf("sent after the second interrupt:\n%s", pk.m)
	default:
	}
}
