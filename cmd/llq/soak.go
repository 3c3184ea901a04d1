package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/llqdns/llq/soak"
	"github.com/llqdns/llq/wire"
)

const soakHelp = `usage: llq soak @SERVER[:PORT] -dns HOST:PORT -zone FILE [flags]

Runs many LLQ clients against SERVER for -duration while the soak rewrites
the zone FILE (which the server must serve, reloading it often) every
-change-every, replaces one client every -churn, and loses -loss of the
datagrams in each direction. At the end it compares every client's view
with a plain query to -dns, closes every client, and checks that no LLQ is
left on the server once the leases have run out (read from -metrics, the
server's Prometheus endpoint, which also gives its memory and goroutines).

Flags:
`

func runSoak(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, metrics, err := parseSoak(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		return usageError(stderr, "soak", err)
	}
	cfg.Progress = stdout
	if metrics != "" {
		cfg.LiveLLQs = func() (int, error) {
			v, err := scrape(metrics, "coredns_llq_subscriptions")
			return int(v["coredns_llq_subscriptions"]), err
		}
		cfg.Sample = func() (int64, int64, int, error) {
			v, err := scrape(metrics, "process_resident_memory_bytes", "go_memstats_heap_inuse_bytes", "go_goroutines")
			return int64(v["process_resident_memory_bytes"]), int64(v["go_memstats_heap_inuse_bytes"]), int(v["go_goroutines"]), err
		}
	}
	rep, err := soak.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(stderr, "llq soak: %v\n", err)
		return exitFailure
	}
	fmt.Fprintln(stdout)
	rep.Markdown(cfg, stdout)
	for _, d := range rep.Diverged {
		fmt.Fprintf(stderr, "diverged: %s\n", d)
	}
	if len(rep.Diverged) > 0 || rep.LeakedLLQs > 0 {
		return exitFailure
	}
	return exitOK
}

// parseSoak reads soak's arguments; asked for help, it writes it to help
// and returns flag.ErrHelp.
func parseSoak(args []string, help io.Writer) (soak.Config, string, error) {
	var cfg soak.Config
	var metrics string
	fs := newFlags("soak")
	fs.StringVar(&cfg.DNS, "dns", "", "ordinary DNS address of the server (the truth)")
	fs.StringVar(&cfg.Zone, "zone", "", "zone file the soak owns and rewrites")
	fs.StringVar(&cfg.Origin, "origin", "example.org.", "origin of the zone")
	fs.IntVar(&cfg.Names, "names", 100, "names in the zone")
	fs.IntVar(&cfg.Clients, "clients", 1000, "clients live at once")
	fs.IntVar(&cfg.PerClient, "per-client", 10, "LLQs per client")
	fs.IntVar(&cfg.Addrs, "addrs", 250, "loopback source addresses (127.2.x.y)")
	fs.DurationVar(&cfg.Duration, "duration", time.Minute, "how long to change and churn")
	fs.DurationVar(&cfg.ChangeEvery, "change-every", time.Second, "zone change interval")
	fs.DurationVar(&cfg.Churn, "churn", 100*time.Millisecond, "one client leaves and one joins per interval (0: none)")
	fs.Float64Var(&cfg.Loss, "loss", 0.05, "fraction of datagrams lost each way")
	fs.DurationVar(&cfg.Lease, "lease", 30*time.Second, "lease to request (the server should grant about this)")
	fs.DurationVar(&cfg.Retry, "retry", time.Second, "client retransmission interval")
	fs.DurationVar(&cfg.Settle, "settle", time.Minute, "time allowed for views to converge after the last change")
	fs.StringVar(&metrics, "metrics", "", "the server's Prometheus endpoint, e.g. http://127.0.0.1:9153/metrics")
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		printHelp(help, fs, soakHelp)
	}
	if err != nil {
		return cfg, "", err
	}
	if len(pos) != 1 || !strings.HasPrefix(pos[0], "@") || cfg.DNS == "" || cfg.Zone == "" {
		return cfg, "", errors.New("want @SERVER[:PORT], -dns and -zone")
	}
	server, err := parseServer(context.Background(), pos[0][1:], wire.DefaultPort)
	if err != nil {
		return cfg, "", err
	}
	cfg.Server = server
	return cfg, metrics, nil
}

// scrape reads the named metrics from a Prometheus text endpoint, summing
// over their label sets.
func scrape(url string, names ...string) (map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := make(map[string]float64, len(names))
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, n := range names {
			if rest, ok := strings.CutPrefix(line, n); ok && (strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "{")) {
				f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
				if len(f) > 0 {
					v, _ := strconv.ParseFloat(f[0], 64)
					out[n] += v
				}
			}
		}
	}
	return out, sc.Err()
}
