package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
)

//go:embed src console demo crypto/dist/unigate-crypto.js crypto/dist/unigate-crypto-gm.js crypto/dist/unigate-crypto-intl.js
var files embed.FS

// Public paths.
const (
	WidgetPath  = "/widget/unigate-widget.js"
	ConsolePath = "/console/"
	DemoPath    = "/demo"
	// CryptoPath is the secure-channel client with every suite (GM, GM-PQ,
	// INTL-PQ), an ES module the widget and the console import only when
	// they run the channel; built from web/crypto by web/bundle.
	CryptoPath = "/widget/unigate-crypto.js"
	// CryptoGMPath and CryptoIntlPath are the same client with the GM
	// suite only and the INTL-PQ suite only, smaller: a page that offers
	// only that suite loads it instead.
	CryptoGMPath   = "/widget/unigate-crypto-gm.js"
	CryptoIntlPath = "/widget/unigate-crypto-intl.js"
	// ConsoleConfigPath is the console's configuration from the gateway
	// (canned replies, secure channel), JSON.
	ConsoleConfigPath = "/console/config.json"
)

// Options is what the gateway tells its pages about itself. The zero
// value is a gateway without canned replies and without the channel.
type Options struct {
	// CannedReplies are offered to every agent in the console, before the
	// ones an agent saved in its browser (config web.canned_replies).
	CannedReplies []string
	// Secure describes the application-layer secure channel
	// (docs/crypto.md); nil when the gateway does not run it.
	Secure *Secure
}

// Secure is the public side of the gateway's secure channel: what a page
// needs to start it. Nothing in it is secret.
type Secure struct {
	// Required: the gateway refuses plaintext connections (crypto.required).
	Required bool
	// Suites the gateway accepts, by name (GM, GM-PQ, INTL-PQ).
	Suites []string
	// Keys are the gateway's identity public keys, which clients pin.
	Keys []ServerKey
}

// ServerKey is one identity public key.
type ServerKey struct {
	Alg       string `json:"alg"`       // "SM2" or "Ed25519"
	PublicKey string `json:"publicKey"` // hex; SM2: the uncompressed point (65 bytes)
}

// pageConfig is what the widget (inlined in its script) and the console
// (ConsoleConfigPath) receive.
type pageConfig struct {
	CannedReplies []string      `json:"cannedReplies,omitempty"`
	Crypto        *pageSecurity `json:"crypto,omitempty"`
}

type pageSecurity struct {
	Required bool        `json:"required,omitempty"`
	Suites   []string    `json:"suites"`            // suites the browser client may offer (those with a key), in the gateway's order of preference
	Keys     []ServerKey `json:"keys"`              // identity keys (SM2 for GM and GM-PQ, Ed25519 for INTL-PQ)
	Modules  *modules    `json:"modules,omitempty"` // versioned URL paths of the client; nil when no suite fits
}

// modules are the builds of the browser client: all suites, GM only,
// INTL-PQ only.
type modules struct {
	All  string `json:"all"`
	GM   string `json:"gm"`
	Intl string `json:"intl"`
}

// suiteKey is the identity key algorithm each suite the browser client
// runs signs with.
var suiteKey = map[string]string{"GM": "SM2", "GM-PQ": "SM2", "INTL-PQ": "Ed25519"}

// Asset is one file as it is served.
type Asset struct {
	Path        string // URL path, e.g. /console/console.js
	ContentType string
	Body        []byte // as served, identity encoding
	Gzip        []byte // the gzip encoding of Body
	Version     string // first 12 hex digits of SHA-256(Body); also the ETag
	HTML        bool
}

var (
	buildOnce sync.Once
	assets    map[string]*Asset
)

// Assets returns the served files by URL path for the zero Options. The
// result is shared: do not modify it.
func Assets() map[string]*Asset {
	buildOnce.Do(func() { assets = mustBuild(Options{}) })
	return assets
}

func read(name string) []byte {
	b, err := files.ReadFile(name)
	if err != nil {
		panic(fmt.Sprintf("web: embedded %s: %v", name, err)) // a build bug
	}
	return b
}

// bundle wraps the shared core and a page script in one function scope;
// server, when set, is the gateway's configuration as a JSON value, bound
// to SERVER in that scope.
func bundle(name, page string, server []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "/*! Unigate %s. Apache-2.0. Built from web/src/core.js and web/src/%s */\n(function () {\n'use strict';\n", name, page)
	if server != nil {
		fmt.Fprintf(&b, "var SERVER = %s;\n", server)
	}
	b.Write(read("src/core.js"))
	b.WriteString("\n")
	b.Write(read("src/" + page))
	b.WriteString("})();\n")
	return b.Bytes()
}

func version(body []byte) string {
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:6])
}

// pageConfigJSON is the configuration a page gets, given the crypto
// client builds (their versioned URLs): the console's has the canned
// replies, the widget's (public: any site loads it) has not.
func pageConfigJSON(o Options, mods modules, console bool) []byte {
	pc := pageConfig{}
	if console {
		pc.CannedReplies = o.CannedReplies
	}
	if s := o.Secure; s != nil {
		ps := &pageSecurity{Required: s.Required, Suites: []string{}, Keys: []ServerKey{}}
		algs := map[string]bool{}
		for _, k := range s.Keys {
			if k.Alg == "SM2" || k.Alg == "Ed25519" {
				ps.Keys = append(ps.Keys, k)
				algs[k.Alg] = true
			}
		}
		for _, name := range s.Suites {
			if alg, ok := suiteKey[name]; ok && algs[alg] && !slices.Contains(ps.Suites, name) {
				ps.Suites = append(ps.Suites, name)
			}
		}
		if len(ps.Suites) > 0 {
			ps.Modules = &mods
		}
		pc.Crypto = ps
	}
	// json.Marshal escapes <, >, & and U+2028/U+2029, so the value is safe
	// inlined in a script.
	b, err := json.Marshal(pc)
	if err != nil {
		panic(err) // strings and slices only
	}
	return b
}

func mustBuild(o Options) map[string]*Asset {
	m := map[string]*Asset{}
	add := func(p, ctype string, body []byte) *Asset {
		a := &Asset{Path: p, ContentType: ctype, Body: body, Version: version(body), HTML: strings.HasPrefix(ctype, "text/html")}
		m[p] = a
		return a
	}
	const js, css, html = "text/javascript; charset=utf-8", "text/css; charset=utf-8", "text/html; charset=utf-8"
	versioned := func(a *Asset) string { return a.Path + "?v=" + a.Version }
	mods := modules{
		All:  versioned(add(CryptoPath, js, read("crypto/dist/unigate-crypto.js"))),
		GM:   versioned(add(CryptoGMPath, js, read("crypto/dist/unigate-crypto-gm.js"))),
		Intl: versioned(add(CryptoIntlPath, js, read("crypto/dist/unigate-crypto-intl.js"))),
	}
	add(WidgetPath, js, bundle("widget", "widget.js", pageConfigJSON(o, mods, false)))
	add("/console/console.js", js, bundle("console", "console.js", nil))
	add(ConsoleConfigPath, "application/json", pageConfigJSON(o, mods, true))
	add("/console/console.css", css, read("console/console.css"))
	add("/demo/demo.css", css, read("demo/demo.css"))
	// HTML pages reference the other assets with ?v=<version>, so those
	// can be cached for good while the pages are revalidated.
	for _, p := range [][2]string{{ConsolePath, "console/index.html"}, {DemoPath, "demo/index.html"}} {
		page := string(read(p[1]))
		for ap, a := range m {
			if !a.HTML {
				page = strings.ReplaceAll(page, `"`+ap+`"`, `"`+ap+"?v="+a.Version+`"`)
			}
		}
		add(p[0], html, []byte(page))
	}
	for _, a := range m {
		var z bytes.Buffer
		w, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
		_, _ = w.Write(a.Body)
		_ = w.Close()
		a.Gzip = z.Bytes()
	}
	return m
}

// Handler serves the widget (/widget/), the agent console (/console/) and
// the demo page (/demo) from the embedded files for the zero Options, and
// passes every other request to next (nil: 404). It is safe for
// concurrent use.
func Handler(next http.Handler) http.Handler {
	return serve(Assets(), next)
}

// NewHandler is Handler for a gateway described by o: its canned replies
// and secure channel reach the pages (the widget's script and the
// console's config.json carry them).
func NewHandler(o Options, next http.Handler) http.Handler {
	return serve(mustBuild(o), next)
}

func serve(as map[string]*Asset, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if !Owns(p) {
			if next == nil {
				http.NotFound(w, r)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		switch p {
		case "/console":
			redirect(w, ConsolePath)
			return
		case "/demo/":
			redirect(w, DemoPath)
			return
		}
		a := as[p]
		if p == "/console/index.html" {
			a = as[ConsolePath]
		}
		if a == nil {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if a.HTML {
			h.Set("Content-Security-Policy", csp(r.Host))
			h.Set("X-Frame-Options", "DENY")
		} else {
			// The widget is loaded by other sites' pages.
			h.Set("Cross-Origin-Resource-Policy", "cross-origin")
		}
		if strings.HasPrefix(p, "/widget/") {
			// The widget imports the crypto client as a module, which a
			// browser fetches with CORS from another site's page.
			h.Set("Access-Control-Allow-Origin", "*")
		}
		if v := r.URL.Query().Get("v"); v != "" && v == a.Version && !a.HTML {
			h.Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			h.Set("Cache-Control", "no-cache")
		}
		h.Set("Vary", "Accept-Encoding")
		body, etag := a.Body, `"`+a.Version+`"`
		if acceptsGzip(r.Header.Get("Accept-Encoding")) {
			body, etag = a.Gzip, `"`+a.Version+`.gz"`
			h.Set("Content-Encoding", "gzip")
		}
		h.Set("ETag", etag)
		if etagMatch(r.Header.Get("If-None-Match"), etag) {
			h.Del("Content-Encoding")
			w.WriteHeader(http.StatusNotModified)
			return
		}
		h.Set("Content-Type", a.ContentType)
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = w.Write(body)
		}
	})
}

// Owns reports whether the web handler serves path p.
func Owns(p string) bool {
	return p == DemoPath || p == "/console" || strings.HasPrefix(p, "/widget/") || strings.HasPrefix(p, "/console/") || strings.HasPrefix(p, "/demo/")
}

var hostRE = regexp.MustCompile(`^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$`)

// csp is the policy of the HTML pages: everything from this origin only;
// the WebSocket to this host (ws: and wss:) besides 'self', for browsers
// that do not count ws: as 'self'.
func csp(host string) string {
	connect := "'self'"
	if hostRE.MatchString(host) {
		connect += " ws://" + host + " wss://" + host
	}
	return "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src " + connect +
		"; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
}

func redirect(w http.ResponseWriter, to string) {
	w.Header().Set("Location", to)
	w.WriteHeader(http.StatusMovedPermanently)
}

// acceptsGzip reports whether an Accept-Encoding value allows gzip (listed
// with a q-value above 0).
func acceptsGzip(ae string) bool {
	for part := range strings.SplitSeq(ae, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
			continue
		}
		q := 1.0
		if v, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q="); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				q = f
			}
		}
		return q > 0
	}
	return false
}

func etagMatch(inm, etag string) bool {
	if inm == "" {
		return false
	}
	if strings.TrimSpace(inm) == "*" {
		return true
	}
	return slices.ContainsFunc(strings.Split(inm, ","), func(s string) bool {
		return strings.TrimPrefix(strings.TrimSpace(s), "W/") == etag
	})
}

// Paths lists the served URL paths, sorted.
func Paths() []string {
	var ps []string
	for p := range Assets() {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}
