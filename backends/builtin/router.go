package builtin

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/unigate/unigate/backends"
)

// Weights weigh the components of an agent's score. The zero value means
// the defaults: 0.5 skills, 0.3 geography, 0.2 sentiment. Weights need not
// sum to 1; scores are divided by the sum so they stay in 0..1. A
// configuration that wants a component off sets the others and leaves it
// at 0.
type Weights struct {
	Skill     float64 `yaml:"skill"`
	Geo       float64 `yaml:"geo"`
	Sentiment float64 `yaml:"sentiment"`
}

// DefaultWeights are used when Weights is zero.
var DefaultWeights = Weights{Skill: 0.5, Geo: 0.3, Sentiment: 0.2}

// ScoringRouter is the built-in Router: a weighted sum of skill match,
// geography and sentiment fit, with capacity as a hard limit and load as
// the tie-break. Components, each in 0..1:
//
//   - skill: for each wanted skill, 1 if the agent has it, depth(a)/depth(w)
//     if the agent has an ancestor a of it ("billing" for "billing/refund"
//     scores 0.5), else 0; averaged over the wanted skills (1 when none).
//   - geo: 1 for the same region (case-insensitive), 0.5 when the first
//     "-"-separated part matches ("cn-east" and "cn-north"), else 0; 0 for
//     everyone when the visitor's region is unknown.
//   - sentiment: 1 - urgency×load/capacity, where urgency = max(0,
//     -sentiment): an unhappy visitor goes to the agent with the most spare
//     attention; for a neutral or happy visitor the component is 1 for all.
//
// Agents with load >= capacity (or capacity <= 0) are not eligible. Equal
// scores (within 1e-9) are ordered by load/capacity, then load, then ID.
// Priority and language do not change the ranking (priority orders the
// queue, not the agents).
//
// The zero value is ready to use. Safe for concurrent use.
type ScoringRouter struct {
	Weights Weights
	// Explain is the number of top agents the explanation details; 0 means 3.
	Explain int
}

var _ backends.Router = (*ScoringRouter)(nil)

type scored struct {
	idx                   int
	score, skill, geo, se float64
	loadFrac              float64
}

// Rank implements backends.Router and never fails.
func (r *ScoringRouter) Rank(_ context.Context, req backends.RankRequest) (backends.Ranking, error) {
	w := r.Weights
	if w == (Weights{}) {
		w = DefaultWeights
	}
	sum := w.Skill + w.Geo + w.Sentiment
	if sum <= 0 {
		w, sum = DefaultWeights, 1
	}
	conv := &req.Conversation
	urgency := max(0, -conv.Sentiment)
	urgency = min(urgency, 1)
	region := strings.ToLower(conv.Region)
	regionHead, _, _ := strings.Cut(region, "-")

	cands := make([]scored, 0, len(req.Candidates))
	for i := range req.Candidates {
		a := &req.Candidates[i]
		if a.Capacity <= 0 || a.Load >= a.Capacity {
			continue
		}
		s := scored{idx: i, loadFrac: float64(max(a.Load, 0)) / float64(a.Capacity)}
		s.skill = skillScore(conv.Skills, a.Skills)
		s.geo = geoScore(region, regionHead, a.Region)
		s.se = 1 - urgency*s.loadFrac
		s.score = (w.Skill*s.skill + w.Geo*s.geo + w.Sentiment*s.se) / sum
		cands = append(cands, s)
	}
	slices.SortFunc(cands, func(x, y scored) int {
		if d := x.score - y.score; d > 1e-9 {
			return -1
		} else if d < -1e-9 {
			return 1
		}
		if x.loadFrac != y.loadFrac {
			if x.loadFrac < y.loadFrac {
				return -1
			}
			return 1
		}
		ax, ay := &req.Candidates[x.idx], &req.Candidates[y.idx]
		if ax.Load != ay.Load {
			return ax.Load - ay.Load
		}
		return strings.Compare(ax.ID, ay.ID)
	})

	out := backends.Ranking{Agents: make([]backends.Ranked, len(cands))}
	for i, s := range cands {
		out.Agents[i] = backends.Ranked{AgentID: req.Candidates[s.idx].ID, Score: s.score}
	}
	out.Explanation = r.explain(w, req, cands)
	return out, nil
}

func (r *ScoringRouter) explain(w Weights, req backends.RankRequest, cands []scored) string {
	var b strings.Builder
	excluded := len(req.Candidates) - len(cands)
	if len(cands) == 0 {
		fmt.Fprintf(&b, "no eligible agent (%d at capacity)", excluded)
		return b.String()
	}
	fmt.Fprintf(&b, "weights skill %.2g, geo %.2g, sentiment %.2g", w.Skill, w.Geo, w.Sentiment)
	n := r.Explain
	if n <= 0 {
		n = 3
	}
	for _, s := range cands[:min(n, len(cands))] {
		a := &req.Candidates[s.idx]
		fmt.Fprintf(&b, "; %s %.3f (skill %.2f, geo %.2f, sentiment %.2f, load %d/%d)",
			a.ID, s.score, s.skill, s.geo, s.se, a.Load, a.Capacity)
	}
	if excluded > 0 {
		fmt.Fprintf(&b, "; %d at capacity", excluded)
	}
	return b.String()
}

func skillScore(wanted, have []string) float64 {
	if len(wanted) == 0 {
		return 1
	}
	total := 0.0
	for _, w := range wanted {
		best := 0.0
		wd := depth(w)
		for _, h := range have {
			switch {
			case h == w:
				best = 1
			case len(h) < len(w) && w[len(h)] == '/' && strings.HasPrefix(w, h):
				best = max(best, float64(depth(h))/float64(wd))
			}
			if best == 1 {
				break
			}
		}
		total += best
	}
	return total / float64(len(wanted))
}

func depth(skill string) int { return strings.Count(skill, "/") + 1 }

func geoScore(region, regionHead, agent string) float64 {
	if region == "" || agent == "" {
		return 0
	}
	if strings.EqualFold(region, agent) {
		return 1
	}
	head, _, _ := strings.Cut(agent, "-")
	if strings.EqualFold(head, regionHead) {
		return 0.5
	}
	return 0
}
