package test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
)

// The README's Corefile snippets and the shipped Corefiles must be accepted
// by CoreDNS, as CoreDNS's own test/readme_test.go checks its plugins'.

// snippet is one fenced corefile block of a Markdown file.
type snippet struct {
	line int // where the block starts, for messages
	body string
}

// corefileSnippets returns the ```corefile (or ~~~ corefile) blocks of the
// Markdown file at path that contain an llq directive.
func corefileSnippets(path string) ([]snippet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()

	var (
		out   []snippet
		fence string // the open block's fence, "" outside a corefile block
		cur   snippet
		body  strings.Builder
		n     int
	)
	s := bufio.NewScanner(f)
	for s.Scan() {
		n++
		line := strings.TrimSpace(s.Text())
		if fence == "" {
			for _, f := range []string{"```", "~~~"} {
				if rest, ok := strings.CutPrefix(line, f); ok && strings.EqualFold(strings.TrimSpace(rest), "corefile") {
					fence, cur = f, snippet{line: n}
					body.Reset()
				}
			}
			continue
		}
		if line == fence {
			cur.body = body.String()
			if hasDirective(cur.body, "llq") {
				out = append(out, cur)
			}
			fence = ""
			continue
		}
		body.WriteString(s.Text())
		body.WriteByte('\n')
	}
	if fence != "" {
		return nil, fmt.Errorf("%s:%d: corefile block never closed", path, cur.line)
	}
	return out, s.Err()
}

// hasDirective reports whether a Corefile uses directive name on some line.
func hasDirective(corefile, name string) bool {
	for _, l := range strings.Split(corefile, "\n") {
		fields := strings.Fields(l)
		if len(fields) > 0 && (fields[0] == name || strings.HasPrefix(fields[0], name+"{")) {
			return true
		}
	}
	return false
}

// checkCorefile has CoreDNS parse body and run every plugin's setup on it.
// With start it also starts the servers (which runs llq's OnStartup, binding
// its listener) and shuts them down again; servers without a port get a
// free one. A port taken by something else is logged, not failed: the
// snippets name fixed ports such as 5352.
func checkCorefile(t *testing.T, name, body string, start bool) error {
	t.Helper()
	in := caddy.CaddyfileInput{Contents: []byte(body), Filepath: name, ServerTypeName: "dns"}
	if err := caddy.ValidateAndExecuteDirectives(in, nil, true); err != nil {
		return fmt.Errorf("%s: CoreDNS rejects it: %w\n%s", name, err, body)
	}
	if !start {
		return nil
	}
	saved := dnsserver.Port
	dnsserver.Port = strconv.Itoa(int(freePort(t)))
	defer func() { dnsserver.Port = saved }()
	inst, err := caddy.Start(in)
	if err != nil {
		if strings.Contains(err.Error(), "address already in use") {
			t.Logf("%s: not started, a port is taken: %v", name, err)
			return nil
		}
		return fmt.Errorf("%s: CoreDNS does not start with it: %w\n%s", name, err, body)
	}
	inst.ShutdownCallbacks()
	inst.Stop()
	return nil
}

func TestReadmeCorefiles(t *testing.T) {
	caddy.Quiet = true
	dnsserver.Quiet = true
	// The snippets name files relative to the repository root, as the
	// README's quick start runs from there.
	t.Chdir("..")
	pages, _ := filepath.Glob(filepath.Join("docs", "*.md"))
	checked := 0
	for _, page := range append([]string{"README.md"}, pages...) {
		snippets, err := corefileSnippets(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, sn := range snippets {
			checked++
			if err := checkCorefile(t, fmt.Sprintf("%s:%d", page, sn.line), sn.body, true); err != nil {
				t.Error(err)
			}
		}
	}
	if checked == 0 {
		t.Error("README.md and docs/ have no corefile block with an llq directive")
	}
}

// TestReadmeLinks: every relative link of README.md and docs/ leads to a
// file that exists, and README.md links every page of docs/.
func TestReadmeLinks(t *testing.T) {
	t.Chdir("..")
	pages, _ := filepath.Glob(filepath.Join("docs", "*.md"))
	link := regexp.MustCompile(`\]\(([^)#\s]+)(#[^)]*)?\)`)
	linked := make(map[string]bool)
	for _, page := range append([]string{"README.md"}, pages...) {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(b), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path := filepath.Clean(filepath.Join(filepath.Dir(page), target))
			if _, err := os.Stat(path); err != nil {
				t.Errorf("%s links %s, which does not exist", page, target)
			}
			if page == "README.md" {
				linked[path] = true
			}
		}
	}
	for _, p := range pages {
		if !linked[p] {
			t.Errorf("README.md does not link %s", p)
		}
	}
}

// TestReadmeSections: the README has the sections CoreDNS's plugin.md asks
// of a plugin README, in order, and before any other section.
func TestReadmeSections(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "README.md"))
	if os.IsNotExist(err) {
		t.Skip("no README.md yet")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The man page's sections come first: the README opens with them, and
	// everything else follows or lives under docs/.
	want := []string{"## Name", "## Description", "## Syntax", "## Examples", "## Metrics"}
	next := 0
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		if strings.HasPrefix(line, "## Also See") {
			t.Errorf("README.md: use %q, not %q", "## See Also", "## Also See")
		}
		if next < len(want) && strings.HasPrefix(line, want[next]) {
			next++
		} else if next < len(want) && strings.HasPrefix(line, "## ") {
			t.Errorf("README.md: %q comes before %q", line, want[next])
		}
	}
	if next < len(want) {
		t.Errorf("README.md lacks %q (or has it out of order); want at least %q in that order", want[next], want)
	}
}

// TestShippedCorefiles: the repository's own Corefiles parse and set up.
// They bind fixed ports, so they are not started.
func TestShippedCorefiles(t *testing.T) {
	caddy.Quiet = true
	dnsserver.Quiet = true
	t.Chdir("..")
	files, _ := filepath.Glob("*/Corefile")
	if len(files) == 0 {
		t.Skip("no Corefile in the repository")
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if hasDirective(string(b), "llq") {
			if err := checkCorefile(t, name, string(b), false); err != nil {
				t.Error(err)
			}
		}
	}
}

// TestCorefileChecker: the parser finds exactly the corefile blocks with
// llq, and the check rejects what CoreDNS would.
func TestCorefileChecker(t *testing.T) {
	md := "# x\n\n~~~ corefile\nexample.org {\n    llq\n}\n~~~\n\n```corefile\n. {\n    whoami\n}\n```\n\n" +
		"``` txt\nllq {\n}\n```\n\n``` Corefile\nexample.net {\n    llq {\n        lease 1h 2h\n    }\n}\n```\n"
	path := filepath.Join(t.TempDir(), "README.md")
	if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := corefileSnippets(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].line != 3 || got[0].body != "example.org {\n    llq\n}\n" ||
		!strings.Contains(got[1].body, "lease 1h 2h") {
		t.Errorf("parsed %+v", got)
	}
	if err := os.WriteFile(path, []byte("~~~ corefile\n. {\n    llq\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := corefileSnippets(path); err == nil {
		t.Error("an unclosed block went unnoticed")
	}

	caddy.Quiet = true
	dnsserver.Quiet = true
	if err := checkCorefile(t, "good", "example.org:0 {\n    bind 127.0.0.1\n    llq {\n        listen 127.0.0.1:0\n    }\n    whoami\n}\n", true); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{
		"example.org {\n    llq {\n        bogus 1\n    }\n}\n",
		"example.org {\n    llq {\n        lease 2h 1h\n    }\n}\n",
		"example.org {\n    llq\n    llq\n}\n",
	} {
		if err := checkCorefile(t, "bad", bad, false); err == nil {
			t.Errorf("accepted:\n%s", bad)
		}
	}
}
