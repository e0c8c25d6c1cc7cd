package bench

import (
	"context"
	"time"
)

// windowStats is what the coordinator measures of the server and the
// client processes over a scenario's measured window.
type windowStats struct {
	ServerRSSStart, ServerRSSEnd   int64
	ServerCPUCores, ClientCPUCores float64
	ServerMetrics                  map[string]float64
	Note                           string // why something was not measured
}

// runWindow starts the workers' timeline (t0 half a second from now), waits
// out the warmup, then measures server RSS, server and client CPU and the
// server's metrics over the window [t0+warmup, t0+warmup+duration). Events
// arriving meanwhile stay with co for the steps that follow.
func runWindow(ctx context.Context, c *Common, start time.Time, pool *workerPool, co *coordinator, warmup, duration time.Duration) (windowStats, error) {
	return runWindowCmd(ctx, c, start, pool, co, warmup, duration, wire{Cmd: cmdStart})
}

// runWindowCmd is runWindow with the start command given: its T0 is set
// here (the echo scenario names the step it starts).
func runWindowCmd(ctx context.Context, c *Common, start time.Time, pool *workerPool, co *coordinator, warmup, duration time.Duration, cmd wire) (windowStats, error) {
	var ws windowStats
	smp := &sampler{c: c, start: start}
	pids := make([]int, len(pool.procs))
	for i, p := range pool.procs {
		pids[i] = p.cmd.Process.Pid
	}
	cpu := func() (server, clients time.Duration) {
		for _, pid := range c.serverPIDs() {
			d, _ := ProcessCPU(pid)
			server += d
		}
		for _, pid := range pids {
			d, _ := ProcessCPU(pid)
			clients += d
		}
		return server, clients
	}
	t0 := time.Now().Add(500 * time.Millisecond)
	cmd.T0 = t0.UnixNano()
	if err := pool.broadcast(cmd); err != nil {
		return ws, err
	}
	if err := co.wait(ctx, time.Until(t0.Add(warmup))); err != nil {
		return ws, err
	}
	s0, _ := smp.take(ctx, 0)
	m0 := smp.metrics
	srv0, cl0 := cpu()
	w0 := time.Now()
	if err := co.wait(ctx, time.Until(t0.Add(warmup+duration))); err != nil {
		return ws, err
	}
	srv1, cl1 := cpu()
	window := time.Since(w0).Seconds()
	s1, _ := smp.take(ctx, 0)
	ws.ServerRSSStart, ws.ServerRSSEnd = s0.ServerRSSBytes, s1.ServerRSSBytes
	if c.ServerPID > 0 {
		ws.ServerCPUCores = (srv1 - srv0).Seconds() / window
	} else {
		ws.Note = "no -server-pid: server CPU and RSS not measured"
	}
	ws.ClientCPUCores = (cl1 - cl0).Seconds() / window
	ws.ServerMetrics = metricsDelta(m0, smp.metrics)
	return ws, nil
}
