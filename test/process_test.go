package test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// CoreDNS as a separate OS process: the cmd/coredns binary (CoreDNS with
// every in-tree plugin plus llq), built once per test run, started from a
// Corefile on loopback ports, and crashed or stopped by signal.

var corednsBuild struct {
	once sync.Once
	path string
	err  error
}

// corednsBinary builds cmd/coredns once per test run and returns its path.
//
// The binary goes to a fixed place per checkout in the user's cache
// directory rather than to a fresh temporary one: go build then finds it up
// to date and does not link it again (about a second instead of 10-20 s on
// 2 cores), and no 100 MB binary is left behind per run. A file lock keeps
// concurrent test runs of one checkout from building it at the same time.
func corednsBinary(t *testing.T) string {
	t.Helper()
	b := &corednsBuild
	b.once.Do(func() { b.path, b.err = buildCoreDNS() })
	if b.err != nil {
		t.Fatalf("building cmd/coredns: %v", b.err)
	}
	return b.path
}

func buildCoreDNS() (string, error) {
	root, err := filepath.Abs("..") // go test runs in the package directory
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "coredns", "main.go")); err != nil {
		return "", fmt.Errorf("module root not found: %w", err)
	}
	// One directory per checkout: another checkout's sources make another
	// binary.
	sum := sha256.Sum256([]byte(root))
	sub := hex.EncodeToString(sum[:6])
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("llq-test-%d", os.Getuid()), sub)
	if cache, err := os.UserCacheDir(); err == nil && os.MkdirAll(filepath.Join(cache, "llq-test", sub), 0o755) == nil {
		dir = filepath.Join(cache, "llq-test", sub)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "build.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close() // and with it the lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}

	// go test puts its own GOROOT/bin first on the test's PATH.
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "coredns")
	// -buildvcs=false: the binary must not depend on git metadata, as in
	// .ci/run (go test does not stamp it, go build would).
	cmd := exec.Command(gobin, "build", "-buildvcs=false", "-o", bin, "./cmd/coredns")
	cmd.Dir = root
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		fmt.Fprintf(os.Stderr, "built %s in %s\n", bin, d.Round(100*time.Millisecond))
	}
	return bin, nil
}

// corednsPorts are the loopback ports a CoreDNS process is to listen on,
// chosen by startCoreDNSProcess.
type corednsPorts struct {
	dns     uint16 // ordinary DNS, UDP and TCP
	llq     uint16 // llq's listen address, UDP and TCP
	metrics uint16 // the prometheus plugin
}

// corednsProcess is a running cmd/coredns process.
type corednsProcess struct {
	*process
	t     *testing.T
	ports corednsPorts
	dns   string         // ordinary DNS, host:port
	llq   netip.AddrPort // the LLQ listener
}

// startCoreDNSProcess starts cmd/coredns with the Corefile corefile writes
// for fresh loopback ports, and returns once both its ordinary DNS port and
// its LLQ port answer. The process is killed when the test ends; the end of
// its output is logged if the test failed.
func startCoreDNSProcess(t *testing.T, name string, corefile func(corednsPorts) string) *corednsProcess {
	t.Helper()
	bin := corednsBinary(t)
	// A port that was free when chosen can be taken before CoreDNS binds it
	// (tests of other packages run alongside); then try other ports.
	for attempt := 1; ; attempt++ {
		p, err := tryCoreDNSProcess(t, bin, corefile)
		if err == nil {
			return p
		}
		if attempt < 5 && strings.Contains(p.tail(), "address already in use") {
			t.Logf("%s: %v; trying other ports", name, err)
			p.kill(t)
			continue
		}
		t.Fatalf("%s: %v", name, err)
	}
}

func tryCoreDNSProcess(t *testing.T, bin string, corefile func(corednsPorts) string) (*corednsProcess, error) {
	t.Helper()
	ports := corednsPorts{dns: freePort(t)}
	for ports.llq = freePort(t); ports.llq == ports.dns; ports.llq = freePort(t) {
	}
	for ports.metrics = freePort(t); ports.metrics == ports.dns || ports.metrics == ports.llq; ports.metrics = freePort(t) {
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(conf, []byte(corefile(ports)), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &corednsProcess{
		process: startProcess(t, dir, bin, "-conf", conf),
		t:       t,
		ports:   ports,
		dns:     fmt.Sprintf("127.0.0.1:%d", ports.dns),
		llq:     netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ports.llq),
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(p.tail())
		}
	})

	deadline := time.Now().Add(30 * time.Second)
	for _, port := range []struct {
		what string
		addr string
	}{{"DNS port", p.dns}, {"LLQ port", p.llq.String()}} {
		for !answers(port.addr) {
			if p.exited() {
				return p, fmt.Errorf("exited before its %s answered: %v\n%s", port.what, p.err, p.tail())
			}
			if time.Now().After(deadline) {
				return p, fmt.Errorf("its %s %s did not answer", port.what, port.addr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return p, nil
}

// answers reports whether a DNS server answers a query on addr over UDP,
// whatever the answer: the LLQ port refuses ordinary queries, and says so.
func answers(addr string) bool {
	m := new(dns.Msg)
	m.SetQuestion("example.org.", dns.TypeSOA)
	c := &dns.Client{Timeout: 500 * time.Millisecond}
	r, _, err := c.Exchange(m, addr)
	return err == nil && r != nil
}

// stop sends SIGTERM, a graceful stop, and returns the exit status. It
// kills the process if it does not exit in time.
func (p *corednsProcess) stop() error {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(30 * time.Second):
		p.kill(p.t)
		return errors.New("did not exit within 30s of SIGTERM")
	}
}

// metric scrapes the process's /metrics and sums the llq metric name
// (without the "coredns_llq_" prefix) over the series whose labels include
// the given name/value pairs, as the in-process metric does. A failed
// scrape counts as -1.
func (p *corednsProcess) metric(name string, labels ...string) float64 {
	mfs, err := p.scrape()
	if err != nil {
		return -1
	}
	return sumSeries(mfs, name, labels...)
}

// scrape reads the process's /metrics.
func (p *corednsProcess) scrape() ([]*dto.MetricFamily, error) {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", p.ports.metrics))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, err
	}
	return slices.Collect(maps.Values(mfs)), nil
}

// process is a child process whose output goes to a log file.
type process struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done is closed
}

func startProcess(t *testing.T, dir, bin string, args ...string) *process {
	t.Helper()
	name := filepath.Base(bin)
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Should the test binary die without cleaning up, the kernel kills the
	// child rather than leaving it bound to its ports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	p := &process{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() { p.kill(t) })
	return p
}

// kill sends SIGKILL, a crash: no shutdown code runs. It waits until the
// process is gone.
func (p *process) kill(t testing.TB) {
	if p.exited() {
		return
	}
	p.cmd.Process.Kill() // by PID, and only the process this test started
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s (pid %d) did not exit after SIGKILL", filepath.Base(p.cmd.Path), p.cmd.Process.Pid)
	}
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// tail returns the end of the process's log, for failure messages.
func (p *process) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return fmt.Sprintf("--- %s (pid %d) ---\n%s", filepath.Base(p.log), p.cmd.Process.Pid, b)
}
