package bench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/unigate/unigate/api"
)

// wrkScripts are the REST API scripts of bench/wrk.
var wrkScripts = []string{"post.lua", "history.lua"}

// routeLine is the "-- route: METHOD PATH" line every REST script has.
var routeLine = regexp.MustCompile(`(?m)^-- route: (GET|POST) (/api/v1/\S+)$`)

// TestWrkScriptRoutes checks that each REST script names a route the API
// serves with that method, and builds its requests from that route.
func TestWrkScriptRoutes(t *testing.T) {
	h := api.New(nil, api.Options{}) // no keys: an existing route answers 401 before any broker call
	for _, name := range wrkScripts {
		b, err := os.ReadFile(filepath.Join("wrk", name))
		if err != nil {
			t.Fatal(err)
		}
		src := string(b)
		m := routeLine.FindStringSubmatch(src)
		if m == nil {
			t.Fatalf("%s: no \"-- route: METHOD /api/v1/...\" line", name)
		}
		method, route := m[1], m[2]
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, strings.ReplaceAll(route, "{id}", "c_test"), nil))
		if rec.Code != http.StatusUnauthorized {
			t.Errorf("%s: %s %s answers %d, want 401 (a route that exists, without a key): %s", name, method, route, rec.Code, rec.Body)
		}
		// The request the script builds: the method, and the route's
		// pieces around the conversation id.
		if !strings.Contains(src, `wrk.format("`+method+`"`) {
			t.Errorf("%s: no wrk.format(%q, ...)", name, method)
		}
		for _, piece := range strings.Split(route, "{id}") {
			if !strings.Contains(src, piece) {
				t.Errorf("%s: the route piece %q is not in the script", name, piece)
			}
		}
		if !strings.Contains(src, `"Bearer "`) {
			t.Errorf("%s: no Authorization: Bearer header", name)
		}
	}
}

// TestWrkREST runs each REST script with wrk for a second against a real
// gateway with an API key, on conversations opened by OpenConversations,
// and checks wrk's and the script's counts: every post stored (201), every
// history page 200 with messages. It needs wrk: without it the test skips
// loudly, except under CI (CI=true), where .ci/run installs it.
func TestWrkREST(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the gateway and wrk; skipped with -short")
	}
	if _, err := exec.LookPath("wrk"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("wrk is not installed; .ci/run installs it (apt-get install -y wrk)")
		}
		t.Skip("SKIPPED LOUDLY: wrk is not installed (apt-get install -y wrk): the REST scripts of bench/wrk were not run")
	}
	key := "wrk-test-" + strconv.FormatInt(time.Now().UnixNano(), 16)
	keyFile := filepath.Join(t.TempDir(), "api.key")
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, "UNIGATE_API_KEYS=[{key_file: "+keyFile+", tenant: bench, scopes: [read, write]}]")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	convs, err := OpenConversations(ctx, OpenConfig{Common: Common{URL: g.url}, Tenant: "bench", Conversations: 4})
	if err != nil {
		t.Fatal(err)
	}
	if len(convs) != 4 || !strings.HasPrefix(convs[0], "c") {
		t.Fatalf("conversations %q", convs)
	}
	base := "http://" + strings.TrimSuffix(strings.TrimPrefix(g.url, "ws://"), "/ws")
	run := func(script string, env ...string) string {
		t.Helper()
		args := append([]string{"-t1", "-c4", "-d1s", "-s", filepath.Join("wrk", script), base, "--"}, convs...)
		cmd := exec.CommandContext(ctx, "wrk", args...)
		cmd.Env = append(append(os.Environ(), "WRK_API_KEY="+key), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("wrk %s: %v\n%s", script, err, out)
		}
		if testing.Verbose() {
			t.Logf("wrk %s:\n%s", script, out)
		}
		return string(out)
	}
	number := func(out, re string) int {
		t.Helper()
		m := regexp.MustCompile(re).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no %q in:\n%s", re, out)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	noErrors := regexp.MustCompile(`errors \(connect 0, read 0, write 0, status 0, timeout 0\)`)

	out := run("post.lua", "WRK_TEXT_BYTES=32")
	requests := number(out, `requests (\d+),`)
	created := number(out, `created \(201\) (\d+)`)
	if !noErrors.MatchString(out) || requests == 0 || created == 0 ||
		number(out, `duplicate \(200\) (\d+)`) != 0 || number(out, `other (\d+)`) != 0 || created > requests {
		t.Errorf("post.lua:\n%s", out)
	}

	// A page of 5 so that the walks page; the history has what was posted.
	out = run("history.lua", "WRK_PAGE=5")
	pages, msgs := number(out, `pages \(200\) (\d+)`), number(out, `messages read (\d+)`)
	if !noErrors.MatchString(out) || pages == 0 || msgs == 0 || msgs > 5*pages || number(out, `other (\d+)`) != 0 {
		t.Errorf("history.lua:\n%s", out)
	}
	// A wrong key is refused: the scripts count it, not pass it.
	cmd := exec.CommandContext(ctx, "wrk", append([]string{"-t1", "-c1", "-d1s", "-s", filepath.Join("wrk", "post.lua"), base, "--"}, convs...)...)
	cmd.Env = append(os.Environ(), "WRK_API_KEY=not-the-key-0123456789")
	bad, err := cmd.CombinedOutput()
	if err != nil || number(string(bad), `created \(201\) (\d+)`) != 0 || number(string(bad), `other (\d+)`) == 0 ||
		!strings.Contains(string(bad), "first other answer: 401") {
		t.Errorf("post.lua with a wrong key (%v):\n%s", err, bad)
	}
}
