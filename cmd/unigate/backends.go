package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/backends/builtin"
	"github.com/unigate/unigate/backends/builtin/faq"
	"github.com/unigate/unigate/backends/supervisor"
	"github.com/unigate/unigate/broker"
	"github.com/unigate/unigate/internal/config"
)

// backendSet is what buildBackends made: the broker's Backends, the
// metrics of the supervised plugins, and what to close on shutdown.
type backendSet struct {
	opts    *broker.Backends
	metrics *metrics.Set
	closers []io.Closer
}

func (s *backendSet) Close() {
	for _, c := range s.closers {
		_ = c.Close()
	}
}

// buildBackends builds the bot, the router and the hook of cfg.Backends:
// built in (in-process) or plugin processes under supervision. Nil
// options when everything is off.
func buildBackends(cfg config.BackendsConfig, log *slog.Logger) (*backendSet, error) {
	set := &backendSet{metrics: metrics.NewSet()}
	sup := func(name, path string, args, env []string) supervisor.Config {
		return supervisor.Config{
			Name:             name,
			Path:             path,
			Args:             args,
			Env:              env,
			CallTimeout:      cfg.CallTimeout,
			MaxConcurrent:    cfg.MaxConcurrent,
			FailureThreshold: cfg.FailureThreshold,
			CoolDown:         cfg.CoolDown,
			RestartMax:       cfg.RestartMax,
			FailOpen:         cfg.HookFailOpen,
			Logger:           log.With("backend", name),
			Metrics:          set.metrics,
		}
	}
	o := &broker.Backends{
		BotThreshold:  cfg.BotThreshold,
		HookMessages:  cfg.HookMessages,
		EventQueue:    cfg.HookEventQueue,
		AuthCacheTTL:  cfg.HookAuthCacheTTL,
		AuthCacheSize: cfg.HookAuthCacheSize,
	}
	switch cfg.Bot {
	case "faq":
		kb := faq.SampleKB()
		if cfg.BotKnowledgeBase != "" {
			var err error
			if kb, err = faq.LoadKB(cfg.BotKnowledgeBase); err != nil {
				return nil, fmt.Errorf("backends.bot_knowledge_base: %w", err)
			}
		}
		bot, err := faq.New(kb)
		if err != nil {
			return nil, fmt.Errorf("backends.bot_knowledge_base: %w", err)
		}
		o.Bot = bot
	case "plugin":
		bot, err := supervisor.NewBot(sup("bot", cfg.BotPlugin, cfg.BotPluginArgs, cfg.BotPluginEnv))
		if err != nil {
			return nil, fmt.Errorf("backends.bot_plugin: %w", err)
		}
		set.closers = append(set.closers, bot)
		o.Bot = bot
	}
	switch cfg.Router {
	case "builtin":
		o.Router = &builtin.ScoringRouter{Weights: builtin.Weights{Skill: cfg.RouterSkill, Geo: cfg.RouterGeo, Sentiment: cfg.RouterSentiment}}
	case "plugin":
		// Asked off the dispatcher's lock; the scorer, with the configured
		// weights, decides when the plugin fails (the broker's fallback,
		// with the agents' state at that moment: not the supervisor's).
		router, err := supervisor.NewRouter(sup("router", cfg.RouterPlugin, cfg.RouterPluginArgs, cfg.RouterPluginEnv))
		if err != nil {
			set.Close()
			return nil, fmt.Errorf("backends.router_plugin: %w", err)
		}
		router.Fallback = nil
		set.closers = append(set.closers, router)
		o.Router = &builtin.ScoringRouter{Weights: builtin.Weights{Skill: cfg.RouterSkill, Geo: cfg.RouterGeo, Sentiment: cfg.RouterSentiment}}
		o.RouterPlugin = router
	}
	if len(cfg.Regions) > 0 {
		regions, err := regionTable(cfg.Regions)
		if err != nil {
			set.Close()
			return nil, err
		}
		o.Regions = regions
	}
	if cfg.HookPlugin != "" {
		hook, err := supervisor.NewHook(sup("hook", cfg.HookPlugin, cfg.HookPluginArgs, cfg.HookPluginEnv))
		if err != nil {
			set.Close()
			return nil, fmt.Errorf("backends.hook_plugin: %w", err)
		}
		set.closers = append(set.closers, hook)
		o.Hook = hook
	}
	if o.Bot != nil || o.Router != nil || o.Hook != nil || o.Regions != nil {
		set.opts = o
	}
	return set, nil
}

// openHookEvents opens the durable hook event queue (broker.HookEvents) on
// the gateway's JetStream, retrying like openStores while a cluster's
// JetStream is not ready. Message texts in events are sealed when
// encryption at rest is on, like the history's. A node holds an event for
// at most call_timeout + 5s before another node may deliver it.
func openHookEvents(cfg config.Config, log *slog.Logger, js jetstream.JetStream, ar *atRest) (*broker.HookEvents, error) {
	o := broker.HookEventsOptions{
		MaxEvents: int64(cfg.Backends.HookEventQueue),
		Replicas:  cfg.NATS.Replicas,
		AckWait:   cfg.Backends.CallTimeout + 5*time.Second,
	}
	if ar.ring != nil {
		o.Sealer, o.SealText = ar.ring, !ar.ring.ReadOnly()
	}
	deadline := time.Now().Add(30 * time.Second)
	if cfg.Clustered() {
		deadline = time.Now().Add(2 * time.Minute)
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		ev, err := broker.OpenHookEvents(ctx, js, o)
		cancel()
		if err == nil {
			return ev, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("backends: hook events: %w", err)
		}
		log.Info("waiting for JetStream (hook events)", "err", err)
		time.Sleep(500 * time.Millisecond)
	}
}

// regionTable maps an address to the region of the longest matching
// prefix of "CIDR=region" entries.
func regionTable(entries []string) (func(netip.Addr) string, error) {
	type entry struct {
		p      netip.Prefix
		region string
	}
	var table []entry
	for i, e := range entries {
		p, r, err := config.ParseRegion(e)
		if err != nil {
			return nil, fmt.Errorf("backends.regions[%d]: %w", i, err)
		}
		table = append(table, entry{p, r})
	}
	slices.SortStableFunc(table, func(a, b entry) int { return b.p.Bits() - a.p.Bits() })
	return func(a netip.Addr) string {
		a = a.Unmap()
		for _, e := range table {
			if e.p.Contains(a) {
				return e.region
			}
		}
		return ""
	}, nil
}
