// Command unigate-bench is the load generator of Unigate: it measures a
// running gateway's memory per idle connection and its chat relay rate and
// latency. See docs/benchmarks.md.
//
//	unigate-bench idle -url ws://127.0.0.1:8080/ws -conns 19900 -rate 2000 -procs 2 \
//	    -src 127.0.0.2-127.0.0.9 -server-pid PID -steps 5000,10000,15000,19900 -json idle.json
//	unigate-bench chat -url ws://127.0.0.1:8080/ws -conversations 1000 -agents 100 \
//	    -agent-capacity 10 -rate 20000 -duration 30s -token-cmd "unigate token agent -data-dir data"
//
// main only parses flags into the bench package's configuration, runs the
// scenario and writes its report; all logic lives in package bench. The
// hidden "worker" subcommand is how the tool runs its own worker processes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/unigate/unigate/bench"
	"github.com/unigate/unigate/protocol"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	var err error
	switch args[0] {
	case "idle":
		err = idle(ctx, args[1:], stdout, stderr)
	case "chat":
		err = chat(ctx, args[1:], stdout, stderr)
	case "worker":
		// Started by the coordinator: the protocol runs over stdin/stdout.
		err = bench.RunWorker(ctx, stdin, stdout)
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "unigate-bench: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "unigate-bench %s: %v\n", args[0], err)
		return 1
	}
}

var errUsage = errors.New("usage")

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage:
  unigate-bench idle -url ws://HOST:PORT/ws -conns N [flags]   memory per idle connection
  unigate-bench chat -url ws://HOST:PORT/ws [flags]            chat relay rate and latency
Run "unigate-bench idle -h" or "unigate-bench chat -h" for the flags; see docs/benchmarks.md.
`)
}

// common registers the flags both scenarios share.
func common(fs *flag.FlagSet, c *bench.Common, src, sub, jsonPath *string, quiet *bool) {
	fs.StringVar(&c.URL, "url", "ws://127.0.0.1:8080/ws", "gateway WebSocket `url`")
	fs.StringVar(sub, "subprotocol", "proto", "`codec`: proto (unigate.v1.proto, binary) or json (unigate.v1.json, text)")
	fs.IntVar(&c.Procs, "procs", 1, "worker `processes` to spread the connections over")
	fs.StringVar(src, "src", "", "local source `addresses`, e.g. 127.0.0.2-127.0.0.9 (default: the kernel's choice)")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "timeout of one connection attempt (dial, upgrade, hello, welcome)")
	fs.IntVar(&c.ServerPID, "server-pid", 0, "gateway process `id`, for its RSS and CPU time from /proc")
	fs.StringVar(&c.MetricsURL, "metrics", "", "gateway Prometheus `url`, e.g. http://127.0.0.1:9090/metrics")
	fs.StringVar(jsonPath, "json", "", "write the report as JSON to `file` (- for stdout)")
	fs.BoolVar(quiet, "quiet", false, "no progress lines on stderr")
}

// finish applies the shared string flags to c.
func finish(c *bench.Common, src, sub string, quiet bool, stderr io.Writer) error {
	switch sub {
	case "proto":
		c.Subprotocol = protocol.SubprotocolProto
	case "json":
		c.Subprotocol = protocol.SubprotocolJSON
	default:
		c.Subprotocol = sub
	}
	if src != "" {
		addrs, err := bench.ParseAddrRange(src)
		if err != nil {
			return err
		}
		c.Src = addrs
	}
	if !quiet {
		c.Progress = stderr
	}
	return nil
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %v\n", fs.Args())
		return errUsage
	}
	return nil
}

func idle(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c bench.IdleConfig
	var src, sub, jsonPath, steps string
	var quiet bool
	fs := flag.NewFlagSet("unigate-bench idle", flag.ContinueOnError)
	fs.SetOutput(stderr)
	common(fs, &c.Common, &src, &sub, &jsonPath, &quiet)
	fs.IntVar(&c.Conns, "conns", 1000, "connections to reach")
	fs.Float64Var(&c.Rate, "rate", 1000, "connections per second, all workers together")
	fs.StringVar(&steps, "steps", "", "comma-separated connection `counts` at which to pause and sample (default: -conns only)")
	fs.DurationVar(&c.Settle, "settle", 5*time.Second, "pause at each step before sampling")
	fs.DurationVar(&c.Hold, "hold", 0, "keep the connections open this long after the last step")
	fs.IntVar(&c.MaxInflight, "max-inflight", 256, "connection attempts in progress per worker")
	fs.IntVar(&c.MaxFailures, "max-failures", 0, "failed attempts after which a worker stops dialing (default max(100, conns/20))")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := finish(&c.Common, src, sub, quiet, stderr); err != nil {
		return err
	}
	if steps != "" {
		var err error
		if c.Steps, err = bench.ParseSteps(steps); err != nil {
			return err
		}
	}
	rep, err := bench.RunIdle(ctx, c)
	if rep != nil {
		rep.WriteSummary(stdout)
		if jsonPath != "" {
			if werr := bench.WriteJSON(jsonPath, rep); werr != nil {
				err = errors.Join(err, werr)
			}
		}
	}
	return err
}

func chat(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c bench.ChatConfig
	var src, sub, jsonPath, tokenCmd, tokens string
	var quiet bool
	fs := flag.NewFlagSet("unigate-bench chat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	common(fs, &c.Common, &src, &sub, &jsonPath, &quiet)
	fs.IntVar(&c.Conversations, "conversations", 1000, "visitors, one conversation each")
	fs.IntVar(&c.Agents, "agents", 100, "agent connections")
	fs.IntVar(&c.AgentCapacity, "agent-capacity", 10, "capacity each agent announces")
	fs.Float64Var(&c.Rate, "rate", 1000, "visitor messages per second, all conversations together (open loop)")
	fs.DurationVar(&c.Duration, "duration", 30*time.Second, "measured duration")
	fs.DurationVar(&c.Warmup, "warmup", 5*time.Second, "unmeasured start of the schedule (0: none)")
	fs.IntVar(&c.Size, "size", 256, "message text `bytes`")
	fs.Float64Var(&c.Reply, "reply", 0.1, "fraction of visitor messages agents answer, 0..1")
	fs.StringVar(&tokenCmd, "token-cmd", "", "`command` printing an agent token; \"-id <prefix>N\" is appended (split on spaces, no quoting)")
	fs.StringVar(&tokens, "tokens", "", "`file` of agent tokens, one per line, instead of -token-cmd")
	fs.StringVar(&c.AgentPrefix, "agent-prefix", "bench-agent-", "agent id `prefix` for -token-cmd")
	fs.StringVar(&c.Skill, "skill", "", "skill group of the run (several workers use <skill>-p<i>)")
	fs.Float64Var(&c.ConnectRate, "connect-rate", 1000, "setup connections per second")
	fs.DurationVar(&c.SetupTimeout, "setup-timeout", 60*time.Second, "bound on connecting and assigning everything")
	fs.DurationVar(&c.Drain, "drain", 10*time.Second, "wait after the schedule for outstanding acks and deliveries")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := finish(&c.Common, src, sub, quiet, stderr); err != nil {
		return err
	}
	if c.Warmup == 0 {
		c.Warmup = -1 // the flag's 0 means none; the config's 0 means the default
	}
	c.TokenCmd = strings.Fields(tokenCmd)
	if tokens != "" {
		var err error
		if c.Tokens, err = bench.ReadTokens(tokens); err != nil {
			return err
		}
	}
	rep, err := bench.RunChat(ctx, c)
	if rep != nil {
		rep.WriteSummary(stdout)
		if jsonPath != "" {
			if werr := bench.WriteJSON(jsonPath, rep); werr != nil {
				err = errors.Join(err, werr)
			}
		}
	}
	return err
}
