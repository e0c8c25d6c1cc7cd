package netpoll

import (
	"sync"
	"sync/atomic"
)

const registryShards = 16

// registry tracks open connections for the deadline sweeper and for
// draining. Adding and removing are O(1) (swap-remove with an index kept in
// the Conn); each shard has its own lock. The count is kept apart, so that
// the open-file check on every accept takes no lock.
type registry struct {
	n      atomic.Int64
	shards [registryShards]struct {
		mu    sync.Mutex
		conns []*Conn
		_     [40]byte // keep shards on separate cache lines
	}
}

func (r *registry) add(c *Conn) {
	sh := &r.shards[c.id%registryShards]
	sh.mu.Lock()
	c.regIndex = len(sh.conns)
	sh.conns = append(sh.conns, c)
	sh.mu.Unlock()
	r.n.Add(1)
}

func (r *registry) remove(c *Conn) {
	sh := &r.shards[c.id%registryShards]
	sh.mu.Lock()
	i := c.regIndex
	if i < len(sh.conns) && sh.conns[i] == c {
		last := len(sh.conns) - 1
		sh.conns[i] = sh.conns[last]
		sh.conns[i].regIndex = i
		sh.conns[last] = nil
		sh.conns = sh.conns[:last]
		r.n.Add(-1)
	}
	sh.mu.Unlock()
}

func (r *registry) count() int { return int(r.n.Load()) }

// each calls f for every connection. f runs with a shard lock held: it must
// be quick and must not call add or remove (Conn.Send and Conn.Close are fine:
// they only queue).
func (r *registry) each(f func(*Conn)) {
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		for _, c := range sh.conns {
			f(c)
		}
		sh.mu.Unlock()
	}
}
