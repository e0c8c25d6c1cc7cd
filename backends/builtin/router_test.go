package builtin

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/unigate/unigate/backends"
)

func ids(r backends.Ranking) []string {
	out := make([]string, len(r.Agents))
	for i, a := range r.Agents {
		out[i] = a.AgentID
	}
	return out
}

func agent(id string, load, capacity int, region string, skills ...string) backends.Agent {
	return backends.Agent{ID: id, Load: load, Capacity: capacity, Region: region, Skills: skills}
}

func TestScoringRouterRanks(t *testing.T) {
	tests := []struct {
		name    string
		weights Weights
		conv    backends.Conversation
		agents  []backends.Agent
		want    []string
	}{
		{
			name:   "exact skill beats none",
			conv:   backends.Conversation{Skills: []string{"billing"}},
			agents: []backends.Agent{agent("none", 0, 5, ""), agent("bill", 0, 5, "", "billing")},
			want:   []string{"bill", "none"},
		},
		{
			name: "hierarchical: parent skill matches partially",
			conv: backends.Conversation{Skills: []string{"billing/refund"}},
			agents: []backends.Agent{
				agent("none", 0, 5, "", "sales"), agent("parent", 0, 5, "", "billing"),
				agent("exact", 0, 5, "", "billing/refund"), agent("child", 0, 5, "", "billing/refund/eu"),
			},
			want: []string{"exact", "parent", "child", "none"},
		},
		{
			name:   "prefix that is not a path parent does not match",
			conv:   backends.Conversation{Skills: []string{"billingx"}},
			agents: []backends.Agent{agent("a", 1, 5, "", "billing"), agent("b", 0, 5, "")},
			want:   []string{"b", "a"}, // both 0 skill: tie broken by load
		},
		{
			name:   "geography: same region, then same country, then elsewhere",
			conv:   backends.Conversation{Region: "CN-East"},
			agents: []backends.Agent{agent("us", 0, 5, "us-west"), agent("cn", 0, 5, "cn-north"), agent("east", 0, 5, "cn-east")},
			want:   []string{"east", "cn", "us"},
		},
		{
			name:   "skills outweigh geography by default",
			conv:   backends.Conversation{Skills: []string{"billing"}, Region: "cn-east"},
			agents: []backends.Agent{agent("near", 0, 5, "cn-east"), agent("skilled", 0, 5, "us-west", "billing")},
			want:   []string{"skilled", "near"},
		},
		{
			name:    "geography outweighs skills when configured",
			weights: Weights{Skill: 0.2, Geo: 0.8},
			conv:    backends.Conversation{Skills: []string{"billing"}, Region: "cn-east"},
			agents:  []backends.Agent{agent("skilled", 0, 5, "us-west", "billing"), agent("near", 0, 5, "cn-east")},
			want:    []string{"near", "skilled"},
		},
		{
			name:    "sentiment only: an angry visitor goes to the least busy agent",
			weights: Weights{Sentiment: 1},
			conv:    backends.Conversation{Sentiment: -1},
			agents:  []backends.Agent{agent("busy", 4, 5, ""), agent("free", 1, 10, ""), agent("mid", 2, 5, "")},
			want:    []string{"free", "mid", "busy"},
		},
		{
			name: "sentiment outweighs a geography half-match for an angry visitor",
			conv: backends.Conversation{Region: "cn-east", Sentiment: -1},
			// near: 0.3*0.5 + 0.2*(1-0.8) = 0.19; far: 0 + 0.2*1 = 0.2
			agents: []backends.Agent{agent("near", 4, 5, "cn-north"), agent("far", 0, 5, "us")},
			want:   []string{"far", "near"},
		},
		{
			name:   "happy visitor: sentiment does not separate, load breaks the tie",
			conv:   backends.Conversation{Sentiment: 0.8},
			agents: []backends.Agent{agent("b", 3, 5, ""), agent("a", 1, 5, "")},
			want:   []string{"a", "b"},
		},
		{
			name:   "tie: lower load fraction first",
			agents: []backends.Agent{agent("half", 5, 10, ""), agent("fifth", 1, 5, "")},
			want:   []string{"fifth", "half"},
		},
		{
			name:   "tie: equal fraction, lower load first",
			agents: []backends.Agent{agent("big", 2, 10, ""), agent("small", 1, 5, "")},
			want:   []string{"small", "big"},
		},
		{
			name:   "tie: equal load, by id",
			agents: []backends.Agent{agent("c", 1, 5, ""), agent("a", 1, 5, ""), agent("b", 1, 5, "")},
			want:   []string{"a", "b", "c"},
		},
		{
			name:   "average over several wanted skills",
			conv:   backends.Conversation{Skills: []string{"billing", "vip"}},
			agents: []backends.Agent{agent("one", 0, 5, "", "billing"), agent("both", 1, 5, "", "vip", "billing")},
			want:   []string{"both", "one"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &ScoringRouter{Weights: tt.weights}
			req := backends.RankRequest{Conversation: tt.conv, Candidates: tt.agents}
			got, err := r.Rank(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids(got), tt.want) {
				t.Fatalf("got %v, want %v\n%s", ids(got), tt.want, got.Explanation)
			}
			checkPick(t, r, req, got)
			for i, a := range got.Agents {
				if a.Score < 0 || a.Score > 1 || (i > 0 && a.Score > got.Agents[i-1].Score+1e-9) {
					t.Fatalf("scores not in 0..1 descending: %+v", got.Agents)
				}
			}
		})
	}
}

func TestScoringRouterExcludes(t *testing.T) {
	tests := []struct {
		name   string
		agents []backends.Agent
		want   []string
		expl   string
	}{
		{"no candidates", nil, []string{}, "no eligible agent (0 at capacity)"},
		{"all at capacity", []backends.Agent{agent("a", 5, 5, ""), agent("b", 6, 5, "")}, []string{}, "no eligible agent (2 at capacity)"},
		{"zero capacity is offline", []backends.Agent{agent("off", 0, 0, "", "billing"), agent("on", 4, 5, "")}, []string{"on"}, "1 at capacity"},
		{"a perfect match at capacity is still excluded", []backends.Agent{agent("full", 5, 5, "cn", "billing"), agent("poor", 0, 5, "")}, []string{"poor"}, "1 at capacity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := (&ScoringRouter{}).Rank(context.Background(), backends.RankRequest{
				Conversation: backends.Conversation{Skills: []string{"billing"}, Region: "cn"},
				Candidates:   tt.agents,
			})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids(got), tt.want) {
				t.Fatalf("got %v, want %v", ids(got), tt.want)
			}
			checkPick(t, &ScoringRouter{}, backends.RankRequest{
				Conversation: backends.Conversation{Skills: []string{"billing"}, Region: "cn"},
				Candidates:   tt.agents,
			}, got)
			if !strings.Contains(got.Explanation, tt.expl) {
				t.Fatalf("explanation %q does not mention %q", got.Explanation, tt.expl)
			}
		})
	}
}

func TestScoringRouterScoreAndExplanation(t *testing.T) {
	got, _ := (&ScoringRouter{}).Rank(context.Background(), backends.RankRequest{
		Conversation: backends.Conversation{Skills: []string{"billing/refund"}, Region: "cn-east", Sentiment: -0.5},
		Candidates:   []backends.Agent{agent("a1", 2, 4, "cn-north", "billing")},
	})
	// skill 0.5, geo 0.5, sentiment 1-0.5*0.5 = 0.75 → 0.25+0.15+0.15 = 0.55
	if len(got.Agents) != 1 || math.Abs(got.Agents[0].Score-0.55) > 1e-9 {
		t.Fatalf("got %+v, want a1 0.55", got.Agents)
	}
	want := "weights skill 0.5, geo 0.3, sentiment 0.2; a1 0.550 (skill 0.50, geo 0.50, sentiment 0.75, load 2/4)"
	if got.Explanation != want {
		t.Fatalf("explanation:\n got %q\nwant %q", got.Explanation, want)
	}
}

// checkPick checks that Pick agrees with Rank's ranking rk of req: the
// same head, the same scores, the same explanation.
func checkPick(t *testing.T, r *ScoringRouter, req backends.RankRequest, rk backends.Ranking) {
	t.Helper()
	top, excluded := r.Pick(&req, nil)
	if want := min(r.explainN(), len(rk.Agents)); len(top) != want {
		t.Fatalf("Pick kept %d agents, want %d", len(top), want)
	}
	for i, x := range top {
		if id := req.Candidates[x.Index].ID; id != rk.Agents[i].AgentID || x.Score != rk.Agents[i].Score {
			t.Fatalf("Pick #%d is %s %v, Rank's is %+v", i, id, x.Score, rk.Agents[i])
		}
	}
	if excluded != len(req.Candidates)-len(rk.Agents) {
		t.Fatalf("Pick excluded %d, Rank %d", excluded, len(req.Candidates)-len(rk.Agents))
	}
	if got := string(r.AppendExplanation(nil, req.Candidates, top, excluded)); got != rk.Explanation {
		t.Fatalf("Pick's explanation\n %q\nRank's\n %q", got, rk.Explanation)
	}
}

// TestScoringRouterPickAgreesWithRank: on random requests (random skills
// at several depths, regions, loads, capacities, weights, sentiment and
// explanation lengths, many ties), Pick's best agents, scores and
// explanation are Rank's.
func TestScoringRouterPickAgreesWithRank(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	skills := []string{"billing", "billing/refund", "billing/refund/eu", "sales", "vip", "tech/net"}
	regions := []string{"", "cn-east", "CN-North", "us-west", "eu"}
	pickN := func(n int) []string {
		var out []string
		for range rng.IntN(n + 1) {
			out = append(out, skills[rng.IntN(len(skills))])
		}
		return out
	}
	for i := range 2000 {
		req := backends.RankRequest{Conversation: backends.Conversation{
			Skills: pickN(5), Region: regions[rng.IntN(len(regions))], Sentiment: rng.Float64()*2 - 1,
		}}
		for j := range rng.IntN(40) {
			req.Candidates = append(req.Candidates, backends.Agent{
				ID: fmt.Sprintf("a%02d", rng.IntN(50)+j), Skills: pickN(3), Region: regions[rng.IntN(len(regions))],
				Load: rng.IntN(6), Capacity: rng.IntN(6),
			})
		}
		r := &ScoringRouter{Explain: rng.IntN(5)}
		if i%3 == 0 {
			r.Weights = Weights{Skill: float64(rng.IntN(3)), Geo: float64(rng.IntN(3)), Sentiment: float64(rng.IntN(3))}
		}
		rk, _ := r.Rank(context.Background(), req)
		checkPick(t, r, req, rk)
	}
}

// TestScoringRouterPickAllocs: a decision over 1,000 candidates with a
// reused buffer allocates nothing.
func TestScoringRouterPickAllocs(t *testing.T) {
	req := benchRequest(1000)
	r := &ScoringRouter{}
	top := make([]Scored, 0, 3)
	if n := testing.AllocsPerRun(100, func() { top, _ = r.Pick(&req, top) }); n != 0 {
		t.Fatalf("Pick allocates %v times per decision, want 0", n)
	}
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() { buf = r.AppendExplanation(buf[:0], req.Candidates, top, 0) }); n != 0 {
		t.Fatalf("AppendExplanation allocates %v times, want 0", n)
	}
}

func TestHandoffBot(t *testing.T) {
	long := strings.Repeat("字", 300)
	tests := []struct {
		lang, text, reply string
		summaryRunes      int
	}{
		{"en", "I need help", defaultReplies[""], 11},
		{"zh-CN", long, defaultReplies["zh"], maxSummary + 1},
		{"", "x", defaultReplies[""], 1},
	}
	for _, tt := range tests {
		a, err := (&HandoffBot{}).Answer(context.Background(), backends.AnswerRequest{Language: tt.lang, Text: tt.text})
		if err != nil || !a.Handoff || a.Intent != HandoffIntent || a.Confidence != 0 || a.Text != tt.reply {
			t.Errorf("%s: got %+v, %v", tt.lang, a, err)
		}
		if n := len([]rune(a.Summary)); n != tt.summaryRunes {
			t.Errorf("%s: summary has %d runes, want %d", tt.lang, n, tt.summaryRunes)
		}
	}
	custom := &HandoffBot{Reply: map[string]string{"": "wait", "fr": "attendez"}}
	if a, _ := custom.Answer(context.Background(), backends.AnswerRequest{Language: "fr-FR"}); a.Text != "attendez" {
		t.Errorf("custom fr: %q", a.Text)
	}
	if a, _ := custom.Answer(context.Background(), backends.AnswerRequest{Language: "de"}); a.Text != "wait" {
		t.Errorf("custom default: %q", a.Text)
	}
}

func benchRequest(n int) backends.RankRequest {
	regions := []string{"cn-east", "cn-north", "us-west", "eu-central"}
	skills := [][]string{{"billing"}, {"billing/refund"}, {"sales"}, {"tech", "billing"}, {"vip"}}
	req := backends.RankRequest{
		Conversation: backends.Conversation{ID: "c", Skills: []string{"billing/refund", "vip"}, Region: "cn-east", Sentiment: -0.4},
		Candidates:   make([]backends.Agent, n),
	}
	for i := range req.Candidates {
		req.Candidates[i] = backends.Agent{
			ID: fmt.Sprintf("agent-%04d", i), Skills: skills[i%len(skills)],
			Load: i % 7, Capacity: 6, Region: regions[i%len(regions)],
		}
	}
	return req
}

// BenchmarkScoringRouter: Rank (the whole ranking, sorted) and Pick with
// its explanation (the dispatcher's decision) over 100 and 1,000
// candidates.
func BenchmarkScoringRouter(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("candidates=%d", n), func(b *testing.B) {
			req := benchRequest(n)
			r := &ScoringRouter{}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Rank(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("pick/candidates=%d", n), func(b *testing.B) {
			req := benchRequest(n)
			r := &ScoringRouter{}
			top := make([]Scored, 0, 3)
			buf := make([]byte, 0, 512)
			b.ReportAllocs()
			for b.Loop() {
				top, _ = r.Pick(&req, top)
				buf = r.AppendExplanation(buf[:0], req.Candidates, top, 0)
			}
		})
	}
}
