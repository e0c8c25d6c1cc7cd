package supervisor

import (
	"context"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/builtin"
)

// Bot is a supervised Bot plugin. Answer never fails: when the plugin
// cannot answer it returns a hand-off answer so the visitor reaches a human.
type Bot struct {
	*supervisor
	// HandoffReply is the fallback's reply text; "" uses builtin.HandoffBot's.
	HandoffReply string
}

// Router is a supervised Router plugin. Rank falls back to Fallback.
type Router struct {
	*supervisor
	// Fallback ranks when the plugin cannot; a zero builtin.ScoringRouter
	// (default weights) unless set. Nil: Rank returns the plugin's error
	// (still counted as a fallback), for a caller that falls back itself,
	// as the gateway's dispatcher does with what it knows when the answer
	// comes.
	Fallback backends.Router
}

// Hook is a supervised Hook plugin, failing open or closed per
// Config.FailOpen.
type Hook struct {
	*supervisor
}

var (
	_ backends.Bot    = (*Bot)(nil)
	_ backends.Router = (*Router)(nil)
	_ backends.Hook   = (*Hook)(nil)
)

// NewBot starts supervising the Bot plugin in cfg. The process starts in
// the background; Ready waits for it.
func NewBot(cfg Config) (*Bot, error) {
	s, err := newSupervisor(cfg, backends.PluginBot)
	if err != nil {
		return nil, err
	}
	return &Bot{supervisor: s}, nil
}

// NewRouter starts supervising the Router plugin in cfg.
func NewRouter(cfg Config) (*Router, error) {
	s, err := newSupervisor(cfg, backends.PluginRouter)
	if err != nil {
		return nil, err
	}
	return &Router{supervisor: s, Fallback: &builtin.ScoringRouter{}}, nil
}

// NewHook starts supervising the Hook plugin in cfg.
func NewHook(cfg Config) (*Hook, error) {
	s, err := newSupervisor(cfg, backends.PluginHook)
	if err != nil {
		return nil, err
	}
	return &Hook{supervisor: s}, nil
}

// TryAnswer asks the plugin, without fallback.
func (b *Bot) TryAnswer(ctx context.Context, req backends.AnswerRequest) (backends.Answer, error) {
	var a backends.Answer
	err := b.call(ctx, func(ctx context.Context, raw any) (err error) {
		a, err = raw.(backends.Bot).Answer(ctx, req)
		return err
	})
	return a, err
}

// Answer implements backends.Bot: the plugin's answer, or a hand-off.
func (b *Bot) Answer(ctx context.Context, req backends.AnswerRequest) (backends.Answer, error) {
	a, err := b.TryAnswer(ctx, req)
	if err != nil {
		b.fallback(err)
		return builtin.HandoffAnswer(req, b.HandoffReply), nil
	}
	return a, nil
}

// TryRank asks the plugin, without fallback.
func (r *Router) TryRank(ctx context.Context, req backends.RankRequest) (backends.Ranking, error) {
	var out backends.Ranking
	err := r.call(ctx, func(ctx context.Context, raw any) (err error) {
		out, err = raw.(backends.Router).Rank(ctx, req)
		return err
	})
	return out, err
}

// Rank implements backends.Router: the plugin's ranking, or Fallback's.
func (r *Router) Rank(ctx context.Context, req backends.RankRequest) (backends.Ranking, error) {
	out, err := r.TryRank(ctx, req)
	if err != nil {
		r.fallback(err)
		if r.Fallback == nil {
			return backends.Ranking{}, err
		}
		return r.Fallback.Rank(ctx, req)
	}
	return out, nil
}

// TryEvent delivers ev to the plugin, without fallback.
func (h *Hook) TryEvent(ctx context.Context, ev backends.Event) error {
	return h.call(ctx, func(ctx context.Context, raw any) error {
		return raw.(backends.Hook).Event(ctx, ev)
	})
}

// Event implements backends.Hook. When the plugin fails, fail-open drops
// the event (nil; counted as a fallback) and fail-closed returns the error
// so the caller retries with the same Event.ID.
func (h *Hook) Event(ctx context.Context, ev backends.Event) error {
	err := h.TryEvent(ctx, ev)
	if err != nil {
		h.fallback(err)
		if h.cfg.FailOpen {
			return nil
		}
	}
	return err
}

// TryAuthenticate asks the plugin, without fallback.
func (h *Hook) TryAuthenticate(ctx context.Context, cred backends.Credentials) (backends.Identity, error) {
	var id backends.Identity
	err := h.call(ctx, func(ctx context.Context, raw any) (err error) {
		id, err = raw.(backends.Hook).Authenticate(ctx, cred)
		return err
	})
	return id, err
}

// Reasons given by the Authenticate fallback.
const (
	ReasonFailOpen   = "authentication backend unavailable; admitted anonymously (fail-open)"
	ReasonFailClosed = "authentication backend unavailable"
)

// Authenticate implements backends.Hook and never returns an error. When
// the plugin fails, fail-open admits the caller anonymously (OK, empty ID,
// the claimed tenant and role) and fail-closed refuses.
func (h *Hook) Authenticate(ctx context.Context, cred backends.Credentials) (backends.Identity, error) {
	id, err := h.TryAuthenticate(ctx, cred)
	if err == nil {
		return id, nil
	}
	h.fallback(err)
	if h.cfg.FailOpen {
		var roles []string
		if cred.Role != "" {
			roles = []string{cred.Role}
		}
		return backends.Identity{OK: true, Reason: ReasonFailOpen, Tenant: cred.Tenant, Roles: roles, Fallback: true}, nil
	}
	return backends.Identity{OK: false, Reason: ReasonFailClosed, Fallback: true}, nil
}
