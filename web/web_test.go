package web

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, h http.Handler, target string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest("GET", target, nil)
	r.Host = "chat.example.com:8080"
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// TestWebHeaders: content types, CSP on pages, nosniff everywhere, no-cache
// with an ETag, 304 on a match, immutable for versioned references.
func TestWebHeaders(t *testing.T) {
	h := Handler(nil)
	for _, p := range Paths() {
		w := get(t, h, p)
		a := Assets()[p]
		if w.Code != 200 || w.Header().Get("Content-Type") != a.ContentType || !bytes.Equal(w.Body.Bytes(), a.Body) {
			t.Fatalf("%s: %d %q", p, w.Code, w.Header().Get("Content-Type"))
		}
		if w.Header().Get("X-Content-Type-Options") != "nosniff" || w.Header().Get("Cache-Control") != "no-cache" {
			t.Errorf("%s: headers %v", p, w.Header())
		}
		csp := w.Header().Get("Content-Security-Policy")
		if a.HTML != (csp != "") {
			t.Errorf("%s: CSP %q", p, csp)
		}
		if a.HTML && !strings.Contains(csp, "connect-src 'self' ws://chat.example.com:8080 wss://chat.example.com:8080;") {
			t.Errorf("%s: CSP %q", p, csp)
		}
		etag := w.Header().Get("ETag")
		if w := get(t, h, p, "If-None-Match", etag); w.Code != 304 || w.Body.Len() != 0 {
			t.Errorf("%s: If-None-Match %s gave %d", p, etag, w.Code)
		}
		if !a.HTML {
			w := get(t, h, p+"?v="+a.Version)
			if cc := w.Header().Get("Cache-Control"); cc != "public, max-age=31536000, immutable" {
				t.Errorf("%s?v=: Cache-Control %q", p, cc)
			}
			if w := get(t, h, p+"?v=stale"); w.Header().Get("Cache-Control") != "no-cache" {
				t.Errorf("%s?v=stale is cached for good", p)
			}
		}
		w = get(t, h, p, "Accept-Encoding", "br, gzip;q=0.8")
		zr, err := gzip.NewReader(w.Body)
		if err != nil || w.Header().Get("Content-Encoding") != "gzip" {
			t.Fatalf("%s: gzip: %v %v", p, err, w.Header())
		}
		plain, _ := io.ReadAll(zr)
		if !bytes.Equal(plain, a.Body) || w.Header().Get("ETag") == etag {
			t.Errorf("%s: gzip body or ETag wrong", p)
		}
		if w := get(t, h, p, "Accept-Encoding", "gzip;q=0"); w.Header().Get("Content-Encoding") != "" {
			t.Errorf("%s: gzip;q=0 answered gzip", p)
		}
	}
	// Pages reference their assets by version.
	page := string(Assets()[ConsolePath].Body)
	if js := Assets()["/console/console.js"]; !strings.Contains(page, `"/console/console.js?v=`+js.Version+`"`) {
		t.Errorf("console page does not reference the versioned script")
	}
}

func TestWebRouting(t *testing.T) {
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(299) })
	h := Handler(next)
	for _, tc := range []struct {
		path string
		code int
		loc  string
	}{
		{"/api/v1/agents", 299, ""}, {"/", 299, ""}, {"/widgets", 299, ""}, {"/demox", 299, ""},
		{"/console", 301, "/console/"}, {"/demo/", 301, "/demo"}, {"/demo", 200, ""}, {"/console/", 200, ""},
		{"/console/index.html", 200, ""}, {"/widget/nope.js", 404, ""}, {"/console/../etc/passwd", 404, ""},
	} {
		w := get(t, h, tc.path)
		if w.Code != tc.code || w.Header().Get("Location") != tc.loc {
			t.Errorf("%s: %d %q, want %d %q", tc.path, w.Code, w.Header().Get("Location"), tc.code, tc.loc)
		}
	}
	r := httptest.NewRequest("POST", "/demo", nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 405 || w.Header().Get("Allow") != "GET, HEAD" {
		t.Errorf("POST /demo: %d %v", w.Code, w.Header())
	}
	// A Host header that is not a host name does not reach the CSP.
	r = httptest.NewRequest("GET", "/demo", nil)
	r.Host = "evil.test; script-src *"
	w = httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if csp := w.Header().Get("Content-Security-Policy"); strings.Contains(csp, "evil") {
		t.Errorf("CSP took the Host header: %q", csp)
	}
}

// TestWebNoExternalHost: no embedded asset names another host: no URL with
// a scheme or protocol-relative URL (the SVG namespace name is not fetched),
// no @import, no font-face source.
func TestWebNoExternalHost(t *testing.T) {
	urlRE := regexp.MustCompile(`(?i)\b(?:https?|wss?|ftp):\/\/[^\s"'<>)]*|["'(=]\s*\/\/[A-Za-z0-9]`)
	allowed := map[string]bool{"http://www.w3.org/2000/svg": true}
	for _, p := range Paths() {
		body := string(Assets()[p].Body)
		for _, m := range urlRE.FindAllString(body, -1) {
			if !allowed[m] {
				t.Errorf("%s references %q", p, m)
			}
		}
		for _, bad := range []string{"@import", "@font-face", "fonts.googleapis", "cdn.", "integrity="} {
			if strings.Contains(body, bad) {
				t.Errorf("%s contains %q", p, bad)
			}
		}
	}
}

// TestWidgetSize reports the widget's size and keeps it within the 30 KB
// (gzip) budget of issue 10; the crypto client (a separate asset, loaded
// only for the secure channel) is reported beside it.
func TestWidgetSize(t *testing.T) {
	for _, p := range Paths() {
		a := Assets()[p]
		t.Logf("%-31s %6d bytes, %6d gzipped", p, len(a.Body), len(a.Gzip))
	}
	if a := Assets()[WidgetPath]; len(a.Gzip) > 30*1024 {
		t.Errorf("widget is %d bytes gzipped, over 30 KB", len(a.Gzip))
	}
}

// TestWebOptions: the gateway's canned replies reach the console's
// config.json and not the public widget; the secure channel's public side
// (required, the suites that have a key in the gateway's order, the keys,
// the versioned URLs of the three client builds) reaches both; the
// widget's scripts may be imported cross-origin (CORS).
func TestWebOptions(t *testing.T) {
	const key = "04aabbcc"
	h := NewHandler(Options{
		CannedReplies: []string{"Team macro </script><script>alert(1)</script>", "您好，我是{me}"},
		Secure:        &Secure{Required: true, Suites: []string{"GM-PQ", "GM", "INTL-PQ"}, Keys: []ServerKey{{Alg: "SM2", PublicKey: key}, {Alg: "Ed25519", PublicKey: "eded"}}},
	}, nil)
	v := func(p string) string { return p + "?v=" + Assets()[p].Version }
	wantCrypto := `"crypto":{"required":true,"suites":["GM-PQ","GM","INTL-PQ"],"keys":[{"alg":"SM2","publicKey":"` + key + `"},{"alg":"Ed25519","publicKey":"eded"}],` +
		`"modules":{"all":"` + v(CryptoPath) + `","gm":"` + v(CryptoGMPath) + `","intl":"` + v(CryptoIntlPath) + `"}}`

	w := get(t, h, ConsoleConfigPath)
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("config.json: %d %v", w.Code, w.Header())
	}
	var cfg struct {
		CannedReplies []string `json:"cannedReplies"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &cfg); err != nil || len(cfg.CannedReplies) != 2 || cfg.CannedReplies[1] != "您好，我是{me}" {
		t.Fatalf("config.json %s: %v", w.Body, err)
	}
	if !strings.Contains(w.Body.String(), wantCrypto) || strings.Contains(w.Body.String(), "</script>") {
		t.Errorf("config.json %s, want %s and no </script>", w.Body, wantCrypto)
	}

	widget := get(t, h, WidgetPath).Body.String()
	if !strings.Contains(widget, "var SERVER = {"+wantCrypto+"};") || strings.Contains(widget, "Team macro") || strings.Contains(widget, "您好，我是") {
		t.Errorf("widget's SERVER: %.300s", widget[strings.Index(widget, "var SERVER"):])
	}
	for _, p := range []string{WidgetPath, CryptoPath, CryptoGMPath, CryptoIntlPath} {
		if w := get(t, h, p); w.Header().Get("Access-Control-Allow-Origin") != "*" || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/javascript") {
			t.Errorf("%s: %v", p, w.Header())
		}
	}
	if w := get(t, h, ConsolePath); w.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("the console page allows CORS")
	}

	// A suite is offered only with a key of its algorithm, in the
	// gateway's order; with none the browser client cannot run, but the
	// pages still learn that the gateway requires the channel.
	mods := `"modules":{"all":"` + v(CryptoPath) + `","gm":"` + v(CryptoGMPath) + `","intl":"` + v(CryptoIntlPath) + `"}`
	for _, tc := range []struct {
		s    *Secure
		want string
	}{
		{&Secure{Required: true, Suites: []string{"INTL-PQ", "GM"}, Keys: []ServerKey{{Alg: "Ed25519", PublicKey: "eded"}}},
			`{"crypto":{"required":true,"suites":["INTL-PQ"],"keys":[{"alg":"Ed25519","publicKey":"eded"}],` + mods + `}}`},
		{&Secure{Suites: []string{"INTL-PQ", "GM-PQ"}, Keys: []ServerKey{{Alg: "SM2", PublicKey: key}}},
			`{"crypto":{"suites":["GM-PQ"],"keys":[{"alg":"SM2","publicKey":"` + key + `"}],` + mods + `}}`},
		{&Secure{Required: true, Suites: []string{"INTL-PQ"}, Keys: []ServerKey{{Alg: "SM2", PublicKey: key}}},
			`{"crypto":{"required":true,"suites":[],"keys":[{"alg":"SM2","publicKey":"` + key + `"}]}}`},
		{&Secure{Required: true, Suites: []string{"GM"}}, `{"crypto":{"required":true,"suites":[],"keys":[]}}`},
	} {
		body := get(t, NewHandler(Options{Secure: tc.s}, nil), ConsoleConfigPath).Body.String()
		if body != tc.want {
			t.Errorf("%+v: config.json %s, want %s", tc.s, body, tc.want)
		}
	}
	if body := get(t, Handler(nil), ConsoleConfigPath).Body.String(); body != "{}" {
		t.Errorf("zero options: config.json %s", body)
	}
}
