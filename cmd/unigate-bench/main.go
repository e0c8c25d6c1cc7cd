// Command unigate-bench is the load generator of Unigate: it measures a
// running gateway's memory per idle connection, its chat relay rate and
// latency, reconnect storms and fan-out. See docs/benchmarks.md.
//
//	unigate-bench idle -url ws://127.0.0.1:8080/ws -conns 19900 -rate 2000 -procs 2 \
//	    -src 127.0.0.2-127.0.0.9 -server-pid PID -steps 5000,10000,15000,19900 -json idle.json
//	unigate-bench chat -url ws://127.0.0.1:8080/ws -conversations 1000 -agents 100 \
//	    -agent-capacity 10 -rate 20000 -duration 30s -token-cmd "unigate token agent -data-dir data"
//	unigate-bench admission -url ws://127.0.0.1:8080/ws -src-storm 127.0.0.2-127.0.0.9 -server-pid PID \
//	    -metrics http://127.0.0.1:9090/metrics -token-cmd "unigate token agent -data-dir data" -json admission.json
//	unigate-bench fanout -url ws://127.0.0.1:8080/ws -visitors 10000 -rate 100 -duration 10s \
//	    -procs 2 -src 127.0.0.2-127.0.0.9 -server-pid PID -json fanout.json
//	unigate-bench echo -url ws://127.0.0.1:8090/ws -conns 1000 -rates 10000,20000 -closed 5s \
//	    -server-pid PID -label netpoll -json echo-netpoll.json
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
	case "storm":
		err = storm(ctx, args[1:], stdout, stderr)
	case "admission":
		err = admission(ctx, args[1:], stdout, stderr)
	case "sweep":
		err = sweep(ctx, args[1:], stdout, stderr)
	case "fanout":
		err = fanout(ctx, args[1:], stdout, stderr)
	case "echo":
		err = echo(ctx, args[1:], stdout, stderr)
	case "open":
		err = open(ctx, args[1:], stdout, stderr)
	case "compare", "-compare":
		err = compare(args[1:], stdout, stderr)
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
  unigate-bench storm -url ws://HOST:PORT/ws [flags]           reconnect storm: resume, replay, gaps
  unigate-bench admission -url ws://HOST:PORT/ws [flags]       live chat p99 during a connection storm beyond the cap
  unigate-bench sweep -url ws://HOST:PORT/ws -from R -to R -step R [chat flags]
                                                               chat at rising rates: saturation point
  unigate-bench fanout -url ws://HOST:PORT/ws -visitors N [flags]
                                                               one event to many: queue position updates
  unigate-bench echo -url ws://HOST:PORT/ws -rates R,R… [flags]
                                                               any WebSocket echo server (netpoll, baselines): latency, msgs/s
  unigate-bench open -url ws://HOST:PORT/ws -tenant T -n N     open N conversations, print their ids (for bench/wrk)
  unigate-bench compare A.json B.json                          ratios B/A of the main figures
Run "unigate-bench <command> -h" for the flags; see docs/benchmarks.md.
`)
}

// common registers the flags both scenarios share.
func common(fs *flag.FlagSet, c *bench.Common, src, sub *string, out *outputs, quiet *bool) {
	fs.StringVar(&c.URL, "url", "ws://127.0.0.1:8080/ws", "gateway WebSocket `url`")
	fs.StringVar(sub, "subprotocol", "proto", "`codec`: proto (unigate.v1.proto, binary) or json (unigate.v1.json, text)")
	fs.IntVar(&c.Procs, "procs", 1, "worker `processes` to spread the connections over")
	fs.StringVar(src, "src", "", "local source `addresses`, e.g. 127.0.0.2-127.0.0.9 (default: the kernel's choice)")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "timeout of one connection attempt (dial, upgrade, hello, welcome)")
	fs.Func("server-pid", "gateway process `id`, for its RSS and CPU time from /proc; several gateways sharing the port: comma-separated ids (summed, and RSS per process)", func(s string) (err error) {
		c.ServerPID, c.ServerPIDs, err = bench.ParsePIDs(s)
		return err
	})
	fs.StringVar(&c.MetricsURL, "metrics", "", "gateway Prometheus `url`, e.g. http://127.0.0.1:9090/metrics")
	fs.StringVar(&c.Suite, "suite", "", "encrypt every connection with the secure channel, `suite` GM, GM-PQ or INTL-PQ (default: plaintext); needs -server-key")
	fs.Func("server-key", "`file`s (comma-separated) of the gateway's identity keys to pin: the PEM public key `unigate keygen` prints, its -out key file, or the hex public key", func(s string) error {
		for f := range strings.SplitSeq(s, ",") {
			if f = strings.TrimSpace(f); f != "" {
				c.ServerKeys = append(c.ServerKeys, f)
			}
		}
		return nil
	})
	fs.StringVar(&out.json, "json", "", "write the report as JSON to `file` (- for stdout)")
	fs.StringVar(&out.html, "html", "", "write the report as a self-contained HTML page with plots to `file`")
	fs.BoolVar(quiet, "quiet", false, "no progress lines on stderr")
}

// outputs are the report files asked for.
type outputs struct{ json, html string }

// write prints the summary of rep and writes its files; err is the
// scenario's error, joined with any write error.
func (o outputs) write(rep bench.Reporter, stdout io.Writer, err error) error {
	rep.WriteSummary(stdout)
	if o.json != "" {
		err = errors.Join(err, bench.WriteJSON(o.json, rep))
	}
	if o.html != "" {
		err = errors.Join(err, bench.WriteHTML(o.html, rep))
	}
	return err
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
	var src, sub, steps string
	var out outputs
	var quiet bool
	fs := flag.NewFlagSet("unigate-bench idle", flag.ContinueOnError)
	fs.SetOutput(stderr)
	common(fs, &c.Common, &src, &sub, &out, &quiet)
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
		err = out.write(rep, stdout, err)
	}
	return err
}

// chatFlags registers the flags of a chat run on fs; apply finishes c
// after parsing.
func chatFlags(fs *flag.FlagSet, c *bench.ChatConfig, src, sub *string, out *outputs, quiet *bool) (apply func() error) {
	var tokenCmd, tokens string
	common(fs, &c.Common, src, sub, out, quiet)
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
	return func() error {
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
		return nil
	}
}

func chat(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c bench.ChatConfig
	var src, sub string
	var out outputs
	var quiet bool
	fs := flag.NewFlagSet("unigate-bench chat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	apply := chatFlags(fs, &c, &src, &sub, &out, &quiet)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := finish(&c.Common, src, sub, quiet, stderr); err != nil {
		return err
	}
	if err := apply(); err != nil {
		return err
	}
	rep, err := bench.RunChat(ctx, c)
	if rep != nil {
		err = out.write(rep, stdout, err)
	}
	return err
}

func sweep(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c bench.SweepConfig
	var src, sub, rates string
	var from, to, step float64
	var out outputs
	var quiet bool
	fs := flag.NewFlagSet("unigate-bench sweep", flag.ContinueOnError)
	fs.SetOutput(stderr)
	apply := chatFlags(fs, &c.Chat, &src, &sub, &out, &quiet)
	fs.StringVar(&rates, "rates", "", "comma-separated offered `rates` (msg/s), increasing; or use -from/-to/-step")
	fs.Float64Var(&from, "from", 0, "first offered rate, msg/s")
	fs.Float64Var(&to, "to", 0, "last offered rate, msg/s")
	fs.Float64Var(&step, "step", 0, "rate increment, msg/s")
	fs.DurationVar(&c.P99Bound, "p99", 5*time.Millisecond, "p99 `bound`: report the highest rate whose visitor→agent p99 stays under it")
	fs.Float64Var(&c.Saturation, "saturation", 0.98, "a step is saturated when delivered < this fraction of offered (or errors)")
	fs.BoolVar(&c.Continue, "continue", false, "keep going after the first saturated step")
	fs.DurationVar(&c.Pause, "pause", 2*time.Second, "pause between steps")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := finish(&c.Chat.Common, src, sub, quiet, stderr); err != nil {
		return err
	}
	if err := apply(); err != nil {
		return err
	}
	var err error
	switch {
	case rates != "" && (from != 0 || to != 0 || step != 0):
		fmt.Fprintln(stderr, "use either -rates or -from/-to/-step")
		return errUsage
	case rates != "":
		c.Rates, err = bench.ParseRates(rates)
	default:
		c.Rates, err = bench.SweepRates(from, to, step)
	}
	if err != nil {
		return err
	}
	rep, err := bench.RunSweep(ctx, c)
	if rep != nil {
		err = out.write(rep, stdout, err)
	}
	return err
}

func storm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c bench.StormConfig
	var src, sub, tokenCmd, tokens string
	var out outputs
	var quiet bool
	fs := flag.NewFlagSet("unigate-bench storm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	common(fs, &c.Common, &src, &sub, &out, &quiet)
	fs.IntVar(&c.Clients, "clients", 1000, "visitors, one open conversation each; all drop and resume at once")
	fs.IntVar(&c.Agents, "agents", 10, "agent connections (they stay connected)")
	fs.IntVar(&c.AgentCapacity, "agent-capacity", 0, "capacity each agent announces (default: clients per agent; the server caps it at 100)")
	fs.IntVar(&c.Messages, "messages", 3, "messages each side sends before the drop")
	fs.IntVar(&c.Missed, "missed", 2, "agent messages per conversation stored while the visitors are away (the replay); -1: none")
	fs.IntVar(&c.Size, "size", 64, "message text `bytes`")
	fs.DurationVar(&c.Down, "down", time.Second, "pause between the missed messages and the reconnect")
	fs.IntVar(&c.MaxInflight, "max-inflight", 0, "reconnects in progress per worker (0: all at once)")
	fs.StringVar(&tokenCmd, "token-cmd", "", "`command` printing an agent token; \"-id <prefix>N\" is appended")
	fs.StringVar(&tokens, "tokens", "", "`file` of agent tokens, one per line, instead of -token-cmd")
	fs.StringVar(&c.AgentPrefix, "agent-prefix", "storm-agent-", "agent id `prefix` for -token-cmd")
	fs.StringVar(&c.Skill, "skill", "", "skill group of the run (several workers use <skill>-p<i>)")
	fs.Float64Var(&c.ConnectRate, "connect-rate", 1000, "setup connections per second")
	fs.DurationVar(&c.SetupTimeout, "setup-timeout", 60*time.Second, "bound on the setup and on the missed messages")
	fs.DurationVar(&c.RecoverTimeout, "recover-timeout", 60*time.Second, "bound on the reconnect and the replay")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := finish(&c.Common, src, sub, quiet, stderr); err != nil {
		return err
	}
	c.TokenCmd = strings.Fields(tokenCmd)
	if tokens != "" {
		var err error
		if c.Tokens, err = bench.ReadTokens(tokens); err != nil {
			return err
		}
	}
	rep, err := bench.RunStorm(ctx, c)
	if rep != nil {
		err = out.write(rep, stdout, err)
	}
	return err
}

func admission(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c bench.AdmissionConfig
	var src, sub, stormSrc string
	var out outputs
	var quiet bool
	fs := flag.NewFlagSet("unigate-bench admission", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: unigate-bench admission -url ws://HOST:PORT/ws -token-cmd CMD [flags]

Admission under a connection storm. A calm open-loop chat runs (-conversations
at -rate, as in "chat"); -calm into its measured window, -storm-procs worker
processes make -attempts connection attempts as fast as the node answers
(-inflight each at a time, from -src-storm addresses) against a node whose
limits.max_connections is below the attempts (bench/run.sh admission starts
one with a cap of 5,000). Every attempt must be admitted (101; with -hello,
then a Welcome) or refused with 503/429 and Retry-After; with the cap known
(-cap, or -metrics) exactly the excess must be refused. Reports the live
conversations' latency (from the due time) in the calm part of the window,
during the storm (messages due between the first dial and the last answer)
and after it, the ratio of the p99s, refusals per second, the answer
latencies, the server's RSS and the CPU of the server (user, system), the
chat clients and the storm clients in each phase. -nice N runs the storm
workers under nice(1): on one machine they take the cores the node would
have, which clients on other machines would not.

`)
		fs.PrintDefaults()
	}
	apply := chatFlags(fs, &c.Chat, &src, &sub, &out, &quiet)
	for name, v := range map[string]string{"conversations": "100", "agents": "10"} {
		f := fs.Lookup(name)
		_ = f.Value.Set(v)
		f.DefValue = v
	}
	fs.DurationVar(&c.Calm, "calm", 10*time.Second, "calm part of the measured window before the storm")
	fs.IntVar(&c.Attempts, "attempts", 15000, "connection attempts of the storm, all storm workers together")
	fs.IntVar(&c.StormProcs, "storm-procs", 3, "storm worker `processes`")
	fs.StringVar(&stormSrc, "src-storm", "", "source `addresses` of the storm, e.g. 127.0.0.2-127.0.0.9 (default: the kernel's choice)")
	fs.IntVar(&c.Inflight, "inflight", 256, "storm attempts in progress per storm worker")
	fs.BoolVar(&c.Hello, "hello", true, "admitted storm connections say an anonymous hello and wait for the welcome")
	fs.DurationVar(&c.StormTimeout, "storm-timeout", 20*time.Second, "bound on one storm attempt")
	fs.IntVar(&c.Nice, "nice", 0, "run the storm workers under nice -n `N` (1..19; 0: not), modelling clients on other machines")
	fs.IntVar(&c.Cap, "cap", 0, "the node's connection cap, to check that exactly the excess is refused (default: from -metrics)")
	fs.StringVar(&c.PprofURL, "pprof", "", "the server's CPU profile `url` (http://ADMIN/debug/pprof/profile)")
	fs.StringVar(&c.CPUProfile, "cpuprofile", "", "write a CPU profile of the server from the start of the storm to `file` (needs -pprof)")
	fs.IntVar(&c.ProfileSeconds, "profile-seconds", 5, "length of the CPU profile")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := finish(&c.Chat.Common, src, sub, quiet, stderr); err != nil {
		return err
	}
	if err := apply(); err != nil {
		return err
	}
	if stormSrc != "" {
		addrs, err := bench.ParseAddrRange(stormSrc)
		if err != nil {
			return err
		}
		c.StormSrc = addrs
	}
	rep, err := bench.RunAdmission(ctx, c)
	if rep != nil {
		err = out.write(rep, stdout, err)
	}
	return err
}

func compare(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("unigate-bench compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: unigate-bench compare A.json B.json\n\n"+
			"Prints, for each main figure of two reports of the same scenario (rates, latency\n"+
			"percentiles, RSS slope ...), A, B and the ratio B/A, marked better or worse.")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return errUsage
	}
	return bench.CompareFiles(stdout, fs.Arg(0), fs.Arg(1))
}

func fanout(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c bench.FanoutConfig
	var src, sub string
	var out outputs
	var quiet bool
	fs := flag.NewFlagSet("unigate-bench fanout", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: unigate-bench fanout -url ws://HOST:PORT/ws -visitors N [flags]

One event to many. -visitors anonymous visitors of a tenant with no agent
open a conversation each and wait in its queue (positions 1..N). Then, on an
open-loop schedule of -rate triggers per second, the visitor at the head
leaves (closes its conversation), and the broker sends every visitor behind
whose position changed a queue update: all of the first 100 places, every
10th place beyond (the gateway's broker.position_exact and
broker.position_step; give the same values as -position-exact and
-position-step, e.g. step 1 when the gateway tells every visitor every
move). Reports the updates delivered per second and the latency
from each trigger's due time to each update (HDR), and to the last update
of each trigger. Every visitor checks that it gets exactly the positions
the triggers explain, once, in order.

`)
		fs.PrintDefaults()
	}
	common(fs, &c.Common, &src, &sub, &out, &quiet)
	fs.IntVar(&c.Visitors, "visitors", 1000, "visitors waiting in the queue, one conversation each (the gateway's queue holds broker.max_queue, default 10,000, in all)")
	fs.Float64Var(&c.Rate, "rate", 10, "triggers per second: visitors leaving the head of the queue (open loop)")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "measured duration")
	fs.DurationVar(&c.Warmup, "warmup", 2*time.Second, "unmeasured start of the schedule (0: none)")
	fs.StringVar(&c.Tenant, "tenant", "", "tenant of the visitors (default: a fresh bench-fanout-<random>, an empty queue)")
	fs.Float64Var(&c.ConnectRate, "connect-rate", 1000, "setup connections per second")
	fs.DurationVar(&c.SetupTimeout, "setup-timeout", 0, "bound on connecting and queueing everybody (default 60s + twice the connect time)")
	fs.DurationVar(&c.Drain, "drain", 10*time.Second, "wait after the last trigger for its updates")
	fs.IntVar(&c.PositionExact, "position-exact", 100, "the gateway's broker.position_exact: every change of the first N places is sent")
	fs.IntVar(&c.PositionStep, "position-step", 10, "the gateway's broker.position_step: beyond -position-exact only multiples of N are sent (1: every change)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := finish(&c.Common, src, sub, quiet, stderr); err != nil {
		return err
	}
	if c.Warmup == 0 {
		c.Warmup = -1 // the flag's 0 means none; the config's 0 means the default
	}
	rep, err := bench.RunFanout(ctx, c)
	if rep != nil {
		err = out.write(rep, stdout, err)
	}
	return err
}

func echo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c bench.EchoConfig
	var src, rates string
	var rate float64
	var out outputs
	var quiet bool
	fs := flag.NewFlagSet("unigate-bench echo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: unigate-bench echo -url ws://HOST:PORT/PATH [flags]

Drives any WebSocket echo server the same way: Unigate's transport
(go run ./netpoll/examples/echo) and the baselines (bench/baselines/gorilla,
bench/baselines/nbio). -conns connections send messages on an open-loop
schedule at each rate of -rates in turn (connection g of C sends its k-th
message at T0 + g/rate + k*C/rate, whatever happened before); every echo is
checked byte for byte and timed from its due time (HDR histogram, so a slow
server cannot hide behind a slow client). A step is saturated when it
echoes less than -saturation of the offered rate inside its window; the
steps stop there unless -continue. With -closed D, a closed-loop step
follows: every connection keeps -window messages in flight for D, which
measures the server's maximum throughput. With -server-pid the server's CPU
per message is reported too. Compare two reports with
"unigate-bench compare A.json B.json"; bench/baselines/run.sh runs all three
servers in one command.

`)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.URL, "url", "ws://127.0.0.1:8090/ws", "echo server WebSocket `url`")
	fs.StringVar(&c.Label, "label", "", "`name` of the server under test, for the report (netpoll, gorilla, nbio ...)")
	fs.StringVar(&c.Subprotocol, "subprotocol", "echo", "WebSocket `subprotocol` to offer (\"\": none; netpoll's echo requires one)")
	fs.IntVar(&c.Procs, "procs", 1, "worker `processes` to spread the connections over")
	fs.StringVar(&src, "src", "", "local source `addresses`, e.g. 127.0.0.2-127.0.0.9 (default: the kernel's choice)")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "timeout of one connection attempt (dial and upgrade)")
	fs.Func("server-pid", "server process `id`, for its CPU time and RSS from /proc (comma-separated ids: summed)", func(s string) (err error) {
		c.ServerPID, c.ServerPIDs, err = bench.ParsePIDs(s)
		return err
	})
	fs.StringVar(&out.json, "json", "", "write the report as JSON to `file` (- for stdout)")
	fs.StringVar(&out.html, "html", "", "write the report as a self-contained HTML page with plots to `file`")
	fs.BoolVar(&quiet, "quiet", false, "no progress lines on stderr")
	fs.IntVar(&c.Conns, "conns", 100, "connections")
	fs.IntVar(&c.Size, "size", 256, "message `bytes` (at least 24, 48 with -text)")
	fs.BoolVar(&c.Text, "text", false, "send text messages (the server validates UTF-8) instead of binary")
	fs.Float64Var(&rate, "rate", 0, "one offered `rate`, messages per second over all connections (open loop); or -rates")
	fs.StringVar(&rates, "rates", "", "comma-separated offered `rates` (msg/s), increasing: one step each (default 10000 unless only -closed)")
	fs.DurationVar(&c.Warmup, "warmup", 2*time.Second, "unmeasured start of each step (0: none)")
	fs.DurationVar(&c.Duration, "duration", 10*time.Second, "measured part of each step")
	fs.Float64Var(&c.Saturation, "saturation", 0.98, "a step is saturated when it echoes less than this fraction of its offered rate (or loses messages)")
	fs.BoolVar(&c.Continue, "continue", false, "run the remaining rates after a saturated step")
	fs.DurationVar(&c.ClosedDuration, "closed", 0, "`duration` of a closed-loop step after the open-loop ones (0: none): maximum throughput")
	fs.DurationVar(&c.ClosedWarmup, "closed-warmup", time.Second, "unmeasured start of the closed-loop step")
	fs.IntVar(&c.Window, "window", 4, "messages in flight per connection in the closed loop")
	fs.DurationVar(&c.Drain, "drain", 5*time.Second, "wait after each step for the outstanding echoes")
	fs.DurationVar(&c.Pause, "pause", time.Second, "pause between steps")
	fs.Float64Var(&c.ConnectRate, "connect-rate", 1000, "connections per second")
	fs.IntVar(&c.MaxInflight, "max-inflight", 256, "connection attempts in progress per worker")
	if err := parse(fs, args); err != nil {
		return err
	}
	if c.Warmup == 0 {
		c.Warmup = -1 // the flag's 0 means none; the config's 0 means the default
	}
	switch {
	case rate != 0 && rates != "":
		fmt.Fprintln(stderr, "use either -rate or -rates")
		return errUsage
	case rate != 0:
		c.Rates = []float64{rate}
	case rates != "":
		var err error
		if c.Rates, err = bench.ParseRates(rates); err != nil {
			return err
		}
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
	rep, err := bench.RunEcho(ctx, c)
	if rep != nil {
		err = out.write(rep, stdout, err)
	}
	return err
}

func open(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c bench.OpenConfig
	var sub string
	fs := flag.NewFlagSet("unigate-bench open", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: unigate-bench open -url ws://HOST:PORT/ws -tenant T [-n N]

Opens N conversations, each by an anonymous visitor of tenant T that says
hello, opens one, waits for its id and leaves; prints the ids, one per line.
The conversations stay open (queued): the REST API scripts in bench/wrk post
to them and read their history with an API key of the same tenant.

`)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.URL, "url", "ws://127.0.0.1:8080/ws", "gateway WebSocket `url`")
	fs.StringVar(&sub, "subprotocol", "proto", "`codec`: proto or json")
	fs.StringVar(&c.Tenant, "tenant", "", "`tenant` of the visitors: the API key's (required)")
	fs.IntVar(&c.Conversations, "n", 1, "conversations to open")
	fs.StringVar(&c.Skill, "skill", "", "skill `group` the conversations ask for")
	fs.DurationVar(&c.Timeout, "timeout", 10*time.Second, "bound on each visitor's connect, hello and open")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := finish(&c.Common, "", sub, true, stderr); err != nil {
		return err
	}
	ids, err := bench.OpenConversations(ctx, c)
	for _, id := range ids {
		fmt.Fprintln(stdout, id)
	}
	return err
}
