package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"
)

// wire is one line of the coordinator protocol. The coordinator sends
// commands (Cmd); workers answer with events (Ev). The first line to a
// worker is its job ("idle" or "chat").
//
//	idle:  → idle{job}   → target{n}… ← reached  (per step)   → close ← result
//	chat:  → chat{job}   ← ready       → start{t0}            ← result
//	storm: → storm{job}  ← ready  → drop  ← dropped  → start{t0}  ← result
//	fanout: → fanout{job} ← ready{positions} → start{t0} ← result → close{t0} ← closed
//	echo:  → echo{job}   ← ready  (→ start{t0, step} ← step)…  → close ← result
//	admit: → admit{job}  ← ready       → start{t0}  ← result  → close ← closed
//
// Workers send "progress" every second and "fatal" before giving up.
type wire struct {
	Cmd    string   `json:"cmd,omitempty"`
	Idle   *idleJob `json:"idle,omitempty"`
	Chat   *chatJob `json:"chat,omitempty"`
	Target int      `json:"target,omitempty"`
	T0     int64    `json:"t0,omitempty"` // start of the chat schedule, Unix nanoseconds

	Ev             string          `json:"ev,omitempty"`
	IdleProgress   *idleProgress   `json:"idle_progress,omitempty"`
	IdleResult     *idleResult     `json:"idle_result,omitempty"`
	ChatProgress   *chatProgress   `json:"chat_progress,omitempty"`
	ChatResult     *chatResult     `json:"chat_result,omitempty"`
	Storm          *stormJob       `json:"storm,omitempty"`
	StormProgress  *stormProgress  `json:"storm_progress,omitempty"`
	StormResult    *stormResult    `json:"storm_result,omitempty"`
	Fanout         *fanoutJob      `json:"fanout,omitempty"`
	FanoutReady    *fanoutReady    `json:"fanout_ready,omitempty"`
	FanoutProgress *fanoutProgress `json:"fanout_progress,omitempty"`
	FanoutResult   *fanoutResult   `json:"fanout_result,omitempty"`
	FanoutClosed   int64           `json:"fanout_closed,omitempty"`
	Echo           *echoJob        `json:"echo,omitempty"`
	Step           int             `json:"step,omitempty"` // echo: the step a start command begins
	EchoProgress   *echoProgress   `json:"echo_progress,omitempty"`
	EchoStep       *echoStepResult `json:"echo_step,omitempty"`
	EchoResult     *echoResult     `json:"echo_result,omitempty"`
	Admit          *admitJob       `json:"admit,omitempty"`
	AdmitProgress  *admitProgress  `json:"admit_progress,omitempty"`
	AdmitResult    *admitResult    `json:"admit_result,omitempty"`
	Err            string          `json:"err,omitempty"`
}

// Commands and events.
const (
	cmdIdle   = "idle"
	cmdChat   = "chat"
	cmdTarget = "target"
	cmdStart  = "start"
	// cmdTeardown: chat workers close their conversations only once every
	// worker has drained (evDrained).
	cmdTeardown = "teardown"
	cmdClose    = "close"
	cmdEcho     = "echo"

	evProgress = "progress"
	evReached  = "reached"
	evReady    = "ready"
	evResult   = "result"
	evDrained  = "drained" // chat: schedule sent and answered, waiting for cmdTeardown
	evFatal    = "fatal"
	evClosed   = "closed"
	evStep     = "step" // echo: one step done
	evExit     = "exit" // synthesized by the coordinator when stdout closes
)

// workerEvent is an event with the index of the worker that sent it.
type workerEvent struct {
	idx int
	w   wire
}

// workerProc is the coordinator's handle on one worker process.
type workerProc struct {
	idx  int
	cmd  *exec.Cmd
	mu   sync.Mutex
	in   io.WriteCloser
	enc  *json.Encoder
	done chan struct{} // closed when the process has exited
}

// send writes one command line.
func (p *workerProc) send(w wire) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.enc.Encode(w); err != nil {
		return fmt.Errorf("%w: worker %d: %v", ErrWorker, p.idx, err)
	}
	return nil
}

// workerPool is the set of workers of one run and the merged stream of
// their events.
type workerPool struct {
	procs  []*workerProc
	events chan workerEvent
}

// startWorkers starts n worker processes. Their events arrive on the
// pool's channel; a worker whose stdout closes produces an evExit event.
func startWorkers(c *Common, n int) (*workerPool, error) {
	return startWorkersWith(c, n, nil)
}

// startWorkersWith is startWorkers with the command line of worker i
// given by argv (nil: c.Worker for all), e.g. under nice(1).
func startWorkersWith(c *Common, n int, argv func(i int) []string) (*workerPool, error) {
	pool := &workerPool{events: make(chan workerEvent, 64*n)}
	for i := range n {
		args := c.Worker
		if argv != nil {
			args = argv(i)
		}
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), c.WorkerEnv...)
		cmd.Env = append(cmd.Env, "UNIGATE_BENCH_WORKER_INDEX="+strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			pool.stop(0)
			return nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			pool.stop(0)
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			pool.stop(0)
			return nil, fmt.Errorf("%w: start %s: %v", ErrWorker, args[0], err)
		}
		p := &workerProc{idx: i, cmd: cmd, in: in, enc: json.NewEncoder(in), done: make(chan struct{})}
		pool.procs = append(pool.procs, p)
		go pool.readEvents(p, out)
	}
	return pool, nil
}

func (pool *workerPool) readEvents(p *workerProc, out io.Reader) {
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var fatal string
	for sc.Scan() {
		var w wire
		if err := json.Unmarshal(sc.Bytes(), &w); err != nil {
			fatal = "undecodable line from worker: " + err.Error()
			break
		}
		pool.events <- workerEvent{idx: p.idx, w: w}
	}
	if err := sc.Err(); err != nil && fatal == "" {
		fatal = err.Error()
	}
	// Drain what is left so the worker never blocks on a full pipe.
	_, _ = io.Copy(io.Discard, out)
	err := p.cmd.Wait()
	close(p.done)
	msg := fatal
	if err != nil {
		msg = fmt.Sprintf("%s (exit: %v)", fatal, err)
	}
	pool.events <- workerEvent{idx: p.idx, w: wire{Ev: evExit, Err: msg}}
}

// broadcast sends w to every worker.
func (pool *workerPool) broadcast(w wire) error {
	var errs []error
	for _, p := range pool.procs {
		errs = append(errs, p.send(w))
	}
	return errors.Join(errs...)
}

// stop closes every worker's stdin (which makes it wind down) and waits up
// to grace for it to exit, then kills it.
func (pool *workerPool) stop(grace time.Duration) {
	for _, p := range pool.procs {
		_ = p.in.Close()
	}
	// Keep reading events meanwhile: a worker blocked on a full pipe could
	// not exit.
	stopDrain := make(chan struct{})
	defer close(stopDrain)
	go func() {
		for {
			select {
			case <-pool.events:
			case <-stopDrain:
				return
			}
		}
	}()
	deadline := time.After(grace)
	for _, p := range pool.procs {
		select {
		case <-p.done:
		case <-deadline:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// workerLink is the worker's side of the protocol.
type workerLink struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (l *workerLink) emit(w wire) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.enc.Encode(w)
}

// RunWorker is the worker process: it reads its job and commands from in
// and writes events to out until the job is done, in closes or ctx ends.
// cmd/unigate-bench calls it for its hidden "worker" subcommand.
func RunWorker(ctx context.Context, in io.Reader, out io.Writer) error {
	bw := bufio.NewWriter(out)
	link := &workerLink{enc: json.NewEncoder(flushWriter{bw})}
	cmds := make(chan wire, 16)
	first := make(chan wire, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		defer close(cmds)
		// Losing the coordinator (stdin closed) cancels everything.
		defer cancel()
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 64<<10), 64<<20)
		n := 0
		for sc.Scan() {
			var w wire
			if err := json.Unmarshal(sc.Bytes(), &w); err != nil {
				continue
			}
			if n++; n == 1 {
				first <- w
				continue
			}
			select {
			case cmds <- w:
			case <-ctx.Done():
				return
			}
		}
	}()
	var job wire
	select {
	case job = <-first:
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		return errors.New("bench worker: no job within 30s")
	}
	var err error
	switch {
	case job.Cmd == cmdIdle && job.Idle != nil:
		ctx, stop := context.WithDeadline(ctx, time.Unix(0, job.Idle.Deadline))
		defer stop()
		err = runIdleWorker(ctx, job.Idle, cmds, link)
	case job.Cmd == cmdChat && job.Chat != nil:
		ctx, stop := context.WithDeadline(ctx, time.Unix(0, job.Chat.Deadline))
		defer stop()
		err = runChatWorker(ctx, job.Chat, cmds, link)
	case job.Cmd == cmdFanout && job.Fanout != nil:
		ctx, stop := context.WithDeadline(ctx, time.Unix(0, job.Fanout.Deadline))
		defer stop()
		err = runFanoutWorker(ctx, job.Fanout, cmds, link)
	case job.Cmd == cmdEcho && job.Echo != nil:
		ctx, stop := context.WithDeadline(ctx, time.Unix(0, job.Echo.Deadline))
		defer stop()
		err = runEchoWorker(ctx, job.Echo, cmds, link)
	case job.Cmd == cmdAdmit && job.Admit != nil:
		ctx, stop := context.WithDeadline(ctx, time.Unix(0, job.Admit.Deadline))
		defer stop()
		err = runAdmitWorker(ctx, job.Admit, cmds, link)
	case job.Cmd == cmdStorm && job.Storm != nil:
		ctx, stop := context.WithDeadline(ctx, time.Unix(0, job.Storm.Deadline))
		defer stop()
		err = runStormWorker(ctx, job.Storm, cmds, link)
	default:
		err = fmt.Errorf("bench worker: unknown job %q", job.Cmd)
	}
	if err != nil {
		link.emit(wire{Ev: evFatal, Err: err.Error()})
	}
	return err
}

// flushWriter flushes after every line so events are not held back.
type flushWriter struct{ b *bufio.Writer }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.b.Write(p)
	if err != nil {
		return n, err
	}
	return n, f.b.Flush()
}
