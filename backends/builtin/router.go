package builtin

import (
	"context"
	"slices"
	"strconv"
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
// Rank sorts every eligible agent (for plugins, tests and callers that
// want the whole ranking). Pick finds only the best few in one pass
// without allocating: the gateway's dispatcher decides with it under its
// lock.
//
// The zero value is ready to use. Safe for concurrent use.
type ScoringRouter struct {
	Weights Weights
	// Explain is the number of top agents the explanation details; 0 means 3.
	Explain int
}

var _ backends.Router = (*ScoringRouter)(nil)

// Scored is one eligible candidate with the components of its score.
type Scored struct {
	Index     int     // in RankRequest.Candidates
	Score     float64 // the weighted sum, 0..1
	Skill     float64 // the components, each 0..1
	Geo       float64
	Sentiment float64
	LoadFrac  float64 // load/capacity, the first tie-break
}

// weights returns the effective weights and their sum.
func (r *ScoringRouter) weights() (Weights, float64) {
	w := r.Weights
	if w == (Weights{}) {
		w = DefaultWeights
	}
	sum := w.Skill + w.Geo + w.Sentiment
	if !(sum > 0) {
		w, sum = DefaultWeights, 1
	}
	return w, sum
}

func (r *ScoringRouter) explainN() int {
	if r.Explain <= 0 {
		return 3
	}
	return r.Explain
}

// scorer is what a decision computes once per conversation, so that
// scoring a candidate is a few comparisons and no allocation.
type scorer struct {
	w          Weights
	sum        float64
	urgency    float64
	region     string // the visitor's, as declared (compared case-insensitively)
	regionHead string // its first "-" part
	wanted     []string
	prefixes   [4]skillPrefixes // of the first wanted skills
}

// skillPrefixes are the lengths of a wanted skill's ancestors
// ("billing/refund/eu": 7 and 14) and its depth, so that matching an
// agent's skill needs no counting.
type skillPrefixes struct {
	ends  [7]int // ends[i]: length of the ancestor of depth i+1
	n     int    // ancestors recorded (at most len(ends))
	depth int
}

func prefixesOf(w string) skillPrefixes {
	var p skillPrefixes
	for i := 0; i < len(w); i++ {
		if w[i] == '/' && p.n < len(p.ends) {
			p.ends[p.n] = i
			p.n++
		}
	}
	p.depth = depth(w)
	return p
}

// ancestorDepth is the depth of w's ancestor of length n (w[n] == '/').
func (p *skillPrefixes) ancestorDepth(w string, n int) int {
	for i := range p.n {
		if p.ends[i] == n {
			return i + 1
		}
	}
	return depth(w[:n]) // deeper than ends records
}

func (r *ScoringRouter) scorer(conv *backends.Conversation) scorer {
	s := scorer{wanted: conv.Skills, region: conv.Region}
	s.w, s.sum = r.weights()
	s.urgency = min(max(0, -conv.Sentiment), 1)
	s.regionHead, _, _ = strings.Cut(conv.Region, "-")
	for i, w := range conv.Skills[:min(len(conv.Skills), len(s.prefixes))] {
		s.prefixes[i] = prefixesOf(w)
	}
	return s
}

// eligible reports whether a may take one more conversation.
func eligible(a *backends.Agent) bool { return a.Capacity > 0 && a.Load < a.Capacity }

// score scores the eligible candidate a, at index i.
func (s *scorer) score(i int, a *backends.Agent) Scored {
	x := Scored{Index: i, LoadFrac: float64(max(a.Load, 0)) / float64(a.Capacity)}
	x.Skill = s.skill(a.Skills)
	x.Geo = s.geo(a.Region)
	x.Sentiment = 1 - s.urgency*x.LoadFrac
	x.Score = (s.w.Skill*x.Skill + s.w.Geo*x.Geo + s.w.Sentiment*x.Sentiment) / s.sum
	return x
}

func (s *scorer) skill(have []string) float64 {
	if len(s.wanted) == 0 {
		return 1
	}
	total := 0.0
	for i, w := range s.wanted {
		if i < len(s.prefixes) {
			total += skillMatch(w, &s.prefixes[i], have)
		} else {
			p := prefixesOf(w)
			total += skillMatch(w, &p, have)
		}
	}
	return total / float64(len(s.wanted))
}

// skillMatch scores the agent's skills have against the wanted skill w
// (p its prefixes): 1 for w itself, depth(a)/depth(w) for an ancestor a,
// else 0.
func skillMatch(w string, p *skillPrefixes, have []string) float64 {
	best := 0.0
	for _, h := range have {
		switch {
		case h == w:
			return 1
		case len(h) < len(w) && w[len(h)] == '/' && strings.HasPrefix(w, h):
			best = max(best, float64(p.ancestorDepth(w, len(h)))/float64(p.depth))
		}
	}
	return best
}

func depth(skill string) int { return strings.Count(skill, "/") + 1 }

func (s *scorer) geo(agent string) float64 {
	if s.region == "" || agent == "" {
		return 0
	}
	if strings.EqualFold(s.region, agent) {
		return 1
	}
	head, _, _ := strings.Cut(agent, "-")
	if strings.EqualFold(head, s.regionHead) {
		return 0.5
	}
	return 0
}

// compare orders x and y as the ranking does (negative: x first): a
// higher score (beyond 1e-9), then a lower load/capacity, then a lower
// load, then the smaller ID, then the earlier candidate.
func compare(x, y *Scored, cands []backends.Agent) int {
	if d := x.Score - y.Score; d > 1e-9 {
		return -1
	} else if d < -1e-9 {
		return 1
	}
	if x.LoadFrac != y.LoadFrac {
		if x.LoadFrac < y.LoadFrac {
			return -1
		}
		return 1
	}
	ax, ay := &cands[x.Index], &cands[y.Index]
	if ax.Load != ay.Load {
		return ax.Load - ay.Load
	}
	if c := strings.Compare(ax.ID, ay.ID); c != 0 {
		return c
	}
	return x.Index - y.Index // the same ID twice: a total order all the same
}

// rankKey is what sorting compares: smaller than Scored, so the sort
// moves less.
type rankKey struct {
	score, loadFrac float64
	load, idx       int32
}

// Rank implements backends.Router and never fails. It allocates the
// ranking, one scratch slice and the explanation.
func (r *ScoringRouter) Rank(_ context.Context, req backends.RankRequest) (backends.Ranking, error) {
	s := r.scorer(&req.Conversation)
	keys := make([]rankKey, 0, len(req.Candidates))
	for i := range req.Candidates {
		if a := &req.Candidates[i]; eligible(a) {
			x := s.score(i, a)
			keys = append(keys, rankKey{score: x.Score, loadFrac: x.LoadFrac, load: int32(min(a.Load, 1<<31-1)), idx: int32(i)})
		}
	}
	slices.SortFunc(keys, func(x, y rankKey) int {
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
		if x.load != y.load {
			return int(x.load) - int(y.load)
		}
		if c := strings.Compare(req.Candidates[x.idx].ID, req.Candidates[y.idx].ID); c != 0 {
			return c
		}
		return int(x.idx) - int(y.idx)
	})
	out := backends.Ranking{Agents: make([]backends.Ranked, len(keys))}
	for i, k := range keys {
		out.Agents[i] = backends.Ranked{AgentID: req.Candidates[k.idx].ID, Score: k.score}
	}
	var top [8]Scored
	n := min(r.explainN(), len(keys))
	explained := top[:0]
	if n > len(top) {
		explained = make([]Scored, 0, n)
	}
	for _, k := range keys[:n] {
		explained = append(explained, s.score(int(k.idx), &req.Candidates[k.idx]))
	}
	var buf [512]byte
	out.Explanation = string(r.AppendExplanation(buf[:0], req.Candidates, explained, len(req.Candidates)-len(keys)))
	return out, nil
}

// Pick returns the best eligible candidates of req, best first: at most
// Explain of them (default 3), the head of what Rank would return, with
// their components; and the number of candidates excluded (at capacity).
// It scores every candidate once and keeps the best in top[:0], which the
// caller reuses between calls: with cap(top) >= Explain it allocates
// nothing. An empty result means nobody is eligible.
func (r *ScoringRouter) Pick(req *backends.RankRequest, top []Scored) (best []Scored, excluded int) {
	s := r.scorer(&req.Conversation)
	k := r.explainN()
	top = top[:0]
	for i := range req.Candidates {
		a := &req.Candidates[i]
		if !eligible(a) {
			excluded++
			continue
		}
		x := s.score(i, a)
		n := len(top)
		if n == k && compare(&x, &top[n-1], req.Candidates) >= 0 {
			continue // the usual case once the best are found
		}
		if n < k {
			top = append(top, x)
		} else {
			n-- // drop the last
		}
		j := n
		for j > 0 && compare(&x, &top[j-1], req.Candidates) < 0 {
			top[j] = top[j-1]
			j--
		}
		top[j] = x
	}
	return top, excluded
}

// AppendExplanation appends the explanation of a decision to dst: the
// weights, then each agent of top (best first, as Pick returns them) with
// its score and components, then the number excluded. Rank's explanation
// is this text.
func (r *ScoringRouter) AppendExplanation(dst []byte, cands []backends.Agent, top []Scored, excluded int) []byte {
	if len(top) == 0 {
		dst = append(dst, "no eligible agent ("...)
		dst = strconv.AppendInt(dst, int64(excluded), 10)
		return append(dst, " at capacity)"...)
	}
	w, _ := r.weights()
	dst = append(dst, "weights skill "...)
	dst = strconv.AppendFloat(dst, w.Skill, 'g', 2, 64)
	dst = append(dst, ", geo "...)
	dst = strconv.AppendFloat(dst, w.Geo, 'g', 2, 64)
	dst = append(dst, ", sentiment "...)
	dst = strconv.AppendFloat(dst, w.Sentiment, 'g', 2, 64)
	for i := range top {
		x := &top[i]
		a := &cands[x.Index]
		dst = append(dst, "; "...)
		dst = append(dst, a.ID...)
		dst = append(dst, ' ')
		dst = strconv.AppendFloat(dst, x.Score, 'f', 3, 64)
		dst = append(dst, " (skill "...)
		dst = strconv.AppendFloat(dst, x.Skill, 'f', 2, 64)
		dst = append(dst, ", geo "...)
		dst = strconv.AppendFloat(dst, x.Geo, 'f', 2, 64)
		dst = append(dst, ", sentiment "...)
		dst = strconv.AppendFloat(dst, x.Sentiment, 'f', 2, 64)
		dst = append(dst, ", load "...)
		dst = strconv.AppendInt(dst, int64(a.Load), 10)
		dst = append(dst, '/')
		dst = strconv.AppendInt(dst, int64(a.Capacity), 10)
		dst = append(dst, ')')
	}
	if excluded > 0 {
		dst = append(dst, "; "...)
		dst = strconv.AppendInt(dst, int64(excluded), 10)
		dst = append(dst, " at capacity"...)
	}
	return dst
}
