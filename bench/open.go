package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/unigate/unigate/protocol"
)

// OpenConfig configures OpenConversations.
type OpenConfig struct {
	Common
	// Tenant of the anonymous visitors (the API key's tenant, to post to
	// the conversations through the REST API). Required.
	Tenant string `json:"tenant"`
	// Conversations to open, one visitor each. Default 1.
	Conversations int `json:"conversations"`
	// Skill the conversations ask for. Optional.
	Skill string `json:"skill,omitempty"`
}

// OpenConversations opens conversations for the REST API benchmarks
// (bench/wrk): each one by an anonymous visitor of the tenant that says
// hello, opens it, waits for the conversation's id and leaves (the
// conversation stays open, queued, until closed or forgotten). It returns
// the ids in order.
func OpenConversations(ctx context.Context, c OpenConfig) ([]string, error) {
	if err := c.Common.setDefaults(); err != nil {
		return nil, err
	}
	if c.Tenant == "" {
		return nil, fmt.Errorf("%w: a tenant is required (the API key's)", ErrConfig)
	}
	if c.Conversations <= 0 {
		c.Conversations = 1
	}
	d, err := newDialer(&c.Common, 4096, nil)
	if err != nil {
		return nil, err
	}
	ids := make([]string, c.Conversations)
	errs := make([]error, c.Conversations)
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range c.Conversations {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ids[i], errs[i] = openOne(ctx, d, i, c.Tenant, c.Skill, c.Timeout)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return ids, nil
}

// openOne opens conversation i and returns its id.
func openOne(ctx context.Context, d *dialer, i int, tenant, skill string, timeout time.Duration) (string, error) {
	conn, err := d.dial(ctx, i)
	if err != nil {
		return "", fmt.Errorf("visitor %d: %w", i, err)
	}
	defer conn.closeNow()
	deadline := time.Now().Add(timeout)
	if _, err := conn.helloWith(protocol.Hello{Tenant: tenant}, deadline); err != nil {
		return "", fmt.Errorf("visitor %d: hello: %w", i, err)
	}
	env := protocol.Envelope{Kind: protocol.KindOpen, ID: openID}
	env.Open.Skill = skill
	if err := conn.send(&env); err != nil {
		return "", fmt.Errorf("visitor %d: open: %w", i, err)
	}
	_ = conn.c.SetReadDeadline(deadline)
	for range 64 {
		e, err := conn.read()
		switch {
		case err != nil:
			return "", fmt.Errorf("visitor %d: waiting for the conversation: %w", i, err)
		case e.Kind == protocol.KindError:
			return "", fmt.Errorf("visitor %d: open: %w", i, &serverError{code: e.Error.Code, msg: strings.Clone(e.Error.Message)})
		case e.Kind == protocol.KindConversation && e.Conversation.ConversationID != "":
			return strings.Clone(e.Conversation.ConversationID), nil
		}
	}
	return "", fmt.Errorf("visitor %d: no conversation among the first 64 envelopes", i)
}
