// Command llq is a client for DNS Long-Lived Queries (RFC 8764).
//
//	llq watch NAME [TYPE] [@SERVER[:PORT]] [flags]
//	llq bench [push] @SERVER[:PORT] [flags]
//	llq soak @SERVER[:PORT] -dns HOST:PORT -zone FILE [flags]
//
// Each subcommand lives in its own file and registers in commands.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

type command struct {
	name    string
	args    string // synopsis of the arguments
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

var commands = []command{
	{"watch", "NAME [TYPE] [@SERVER[:PORT]] [flags]", "follow the answers to a question live over LLQ", runWatch},
	{"bench", "[push] @SERVER[:PORT] [flags]", "load an LLQ (or with push, a DNS Push) server with many clients and report the figures", runBench},
	{"soak", "@SERVER[:PORT] -dns HOST:PORT -zone FILE [flags]", "run clients under churn and loss for long; check convergence and leaks", runSoak},
}

func main() {
	// The first signal asks for a clean exit, which terminates the LLQs and
	// may take the whole retransmission schedule; a second one exits at
	// once. Both are read here, so that the second cannot slip in before
	// the first has been acted on.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-sigs
		cancel()
		<-sigs
		os.Exit(exitInterrupted)
	}()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(stdout)
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "llq: unknown command %q\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: llq COMMAND [arguments]")
	fmt.Fprintln(w)
	for _, c := range commands {
		fmt.Fprintf(w, "  llq %s %s\n      %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'llq COMMAND -h' for a command's flags.")
}

// newFlags returns a subcommand's flag set, which prints nothing itself:
// the subcommand prints its help on stdout when asked for it (-h) and
// reports a usage error on stderr with exit status 2 (usageError).
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// printHelp writes a subcommand's help: text, its flags, then the notes.
func printHelp(w io.Writer, fs *flag.FlagSet, text string, notes ...string) {
	fmt.Fprint(w, text)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	for _, n := range notes {
		fmt.Fprintf(w, "\n%s\n", n)
	}
}

// usageError reports a usage error of subcommand name and returns the exit
// status for it.
func usageError(stderr io.Writer, name string, err error) int {
	fmt.Fprintf(stderr, "llq %s: %v\nRun 'llq %s -h' for its usage.\n", name, err, name)
	return exitUsage
}

// parseInterspersed parses flags wherever they stand among the arguments
// and returns the positional ones: the flag package stops at the first
// argument, but LLQ users write flags after the name, as dig users do.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
