// Command bundle builds the browser assets of the secure-channel client
// from web/crypto/unigate-crypto.mjs and its vendored npm packages
// (web/crypto/node_modules, installed by `npm ci` from the pinned
// package-lock.json), with esbuild's Go API:
//
//   - dist/unigate-crypto.js, every suite: GM, GM-PQ and INTL-PQ (SM2, SM3
//     and SM4 from sm-crypto and jsbn; ML-KEM-768 from @noble/post-quantum;
//     X25519, Ed25519, SHA-256/HMAC and AES-GCM from WebCrypto, or from
//     @noble/curves, @noble/hashes and @noble/ciphers where the browser has
//     no WebCrypto or not these algorithms);
//   - dist/unigate-crypto-gm.js, the GM suite only: the ML-KEM, X25519,
//     Ed25519 and AES imports are replaced by stubs that throw, which keeps
//     @noble/post-quantum, @noble/curves and @noble/ciphers out;
//   - dist/unigate-crypto-intl.js, the INTL-PQ suite only: sm-crypto and
//     jsbn are stubs.
//
// A page loads the smallest one that has the suites it offers.
//
// The outputs are committed, so that a clone builds and runs without Node;
// `make generate-check` runs this command with -check, which rebuilds in
// memory and fails when a committed file differs (generate-then-diff).
//
//	go -C web/bundle run .          # write the assets
//	go -C web/bundle run . -check   # compare with the committed ones
//
// It is a module of its own so that esbuild never enters the gateway's
// module graph (nor its binary or SBOM).
//
// Licences of everything bundled are appended as a comment; legal comments
// of the sources are dropped, and the URL schemes in the licence texts
// (the authors' home pages) are removed: embedded assets may not name any
// host (deploy/offline_test.go, web's TestWebNoExternalHost).
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/evanw/esbuild/pkg/api"
)

const entry = "unigate-crypto.mjs"

// pkg is an npm package that ends up in an asset, with the file holding
// its licence.
type pkg struct{ name, licence string }

var (
	smCrypto     = pkg{"sm-crypto", "LICENCE_MIT"}
	jsbn         = pkg{"jsbn", "LICENSE"}
	noblePQ      = pkg{"@noble/post-quantum", "LICENSE"}
	nobleCurves  = pkg{"@noble/curves", "LICENSE"}
	nobleCiphers = pkg{"@noble/ciphers", "LICENSE"}
	nobleHashes  = pkg{"@noble/hashes", "LICENSE"}
)

// asset is one output file.
type asset struct {
	out     string // path under web/crypto
	title   string // for the banner
	bundled []pkg
	stubs   []stub // imports replaced by stubs that throw
}

// stub replaces the module an import path names with one that exports
// names ("default" for the default export), each throwing when used.
type stub struct {
	filter string // esbuild's (Go) regular expression on the import path
	suite  string // the suite of the asset, for the error
	names  []string
}

// analyze prints esbuild's analysis of each asset's metafile.
var analyze bool

var assets = []asset{
	{
		out:     "dist/unigate-crypto.js",
		title:   "GM, GM-PQ and INTL-PQ suites",
		bundled: []pkg{smCrypto, jsbn, noblePQ, nobleCurves, nobleCiphers, nobleHashes},
	},
	{
		out:     "dist/unigate-crypto-gm.js",
		title:   "GM suite",
		bundled: []pkg{smCrypto, jsbn, nobleHashes},
		stubs: []stub{
			{`^@noble/post-quantum/`, "GM", []string{"ml_kem768"}},
			{`^@noble/curves/`, "GM", []string{"x25519", "ed25519"}},
			{`^@noble/ciphers/`, "GM", []string{"gcm"}},
		},
	},
	{
		out:     "dist/unigate-crypto-intl.js",
		title:   "INTL-PQ suite",
		bundled: []pkg{noblePQ, nobleCurves, nobleCiphers, nobleHashes},
		stubs: []stub{
			{`^(sm-crypto|jsbn)(/|$)`, "INTL-PQ", []string{"default"}},
		},
	},
}

func main() {
	dir := flag.String("dir", "../crypto", "the web/crypto directory")
	check := flag.Bool("check", false, "compare with the committed assets instead of writing them")
	flag.BoolVar(&analyze, "analyze", false, "print what each asset is made of (bytes per source file)")
	flag.Parse()
	failed := false
	for _, a := range assets {
		if err := run(*dir, a, *check); err != nil {
			fmt.Fprintln(os.Stderr, "bundle:", err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

// run builds a and writes it, or with check compares it with the
// committed file.
func run(dir string, a asset, check bool) error {
	got, err := build(dir, a)
	if err != nil {
		return fmt.Errorf("%s: %w", a.out, err)
	}
	path := filepath.Join(dir, a.out)
	if check {
		have, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(have, got) {
			return fmt.Errorf("%s is not what web/bundle builds (%d bytes committed, %d built; err %v): run `go -C web/bundle run .` and commit it", path, len(have), len(got), err)
		}
		fmt.Printf("bundle: %s is up to date (%d bytes)\n", path, len(got))
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, got, 0o644); err != nil {
		return err
	}
	fmt.Printf("bundle: wrote %s (%d bytes)\n", path, len(got))
	return nil
}

// stubs replaces the imports a one-suite asset does not need by modules
// whose exports throw when touched: asking that asset for another suite
// fails with a clear error.
func stubs(list []stub) api.Plugin {
	return api.Plugin{Name: "stubs", Setup: func(b api.PluginBuild) {
		for i, st := range list {
			path := fmt.Sprintf("stub-%d", i)
			b.OnResolve(api.OnResolveOptions{Filter: st.filter}, func(api.OnResolveArgs) (api.OnResolveResult, error) {
				return api.OnResolveResult{Path: path, Namespace: "stub"}, nil
			})
			var src strings.Builder
			fmt.Fprintf(&src, "const no = () => { throw new Error('this build of the Unigate secure-channel client has the %s suite only; unigate-crypto.js has them all') }\n", st.suite)
			for _, n := range st.names {
				if n == "default" {
					src.WriteString("export default new Proxy({}, { get: no })\n")
				} else {
					fmt.Fprintf(&src, "export const %s = new Proxy({}, { get: no })\n", n)
				}
			}
			contents := src.String()
			b.OnLoad(api.OnLoadOptions{Filter: "^" + regexp.QuoteMeta(path) + "$", Namespace: "stub"}, func(api.OnLoadArgs) (api.OnLoadResult, error) {
				return api.OnLoadResult{Contents: &contents, Loader: api.LoaderJS}, nil
			})
		}
	}}
}

// schemeRE finds a URL scheme (https://): licence texts lose theirs.
var schemeRE = regexp.MustCompile(`(?i)\b[a-z][a-z0-9+.-]*://`)

func build(dir string, a asset) ([]byte, error) {
	var banner, licences strings.Builder
	var names []string
	for _, p := range a.bundled {
		meta, err := os.ReadFile(filepath.Join(dir, "node_modules", p.name, "package.json"))
		if err != nil {
			return nil, fmt.Errorf("%w (run `npm ci` in web/crypto)", err)
		}
		var pkg struct{ Version, License string }
		if err := json.Unmarshal(meta, &pkg); err != nil {
			return nil, fmt.Errorf("%s/package.json: %w", p.name, err)
		}
		text, err := os.ReadFile(filepath.Join(dir, "node_modules", p.name, p.licence))
		if err != nil {
			return nil, err
		}
		// "Copyright (c) 2022 Paul Miller (https://…)": the notice stays,
		// without the scheme that would make it a URL.
		text = schemeRE.ReplaceAll(text, nil)
		names = append(names, fmt.Sprintf("%s %s (%s)", p.name, pkg.Version, pkg.License))
		fmt.Fprintf(&licences, "\n---- %s %s ----\n%s\n", p.name, pkg.Version, strings.ReplaceAll(strings.TrimSpace(string(text)), "*/", "* /"))
	}
	fmt.Fprintf(&banner, "/*! Unigate secure-channel client, %s (docs/crypto.md). Apache-2.0.\n"+
		" * Generated by web/bundle from web/crypto/unigate-crypto.mjs with %s;\n"+
		" * do not edit (go -C web/bundle run .). Licences at the end. */", a.title, strings.Join(names, ", "))
	r := api.Build(api.BuildOptions{
		AbsWorkingDir:     mustAbs(dir),
		EntryPoints:       []string{entry},
		Bundle:            true,
		Format:            api.FormatESModule,
		Platform:          api.PlatformBrowser,
		Target:            api.ES2020, // BigInt literals (GCM)
		MinifyWhitespace:  true,
		MinifyIdentifiers: true,
		MinifySyntax:      true,
		LegalComments:     api.LegalCommentsNone,
		Charset:           api.CharsetASCII,
		Banner:            map[string]string{"js": banner.String()},
		Footer:            map[string]string{"js": "/* Licences of the bundled packages:\n" + licences.String() + "*/"},
		Plugins:           []api.Plugin{stubs(a.stubs)},
		Outfile:           a.out,
		Write:             false,
		LogLevel:          api.LogLevelWarning,
		Metafile:          analyze,
	})
	if analyze {
		fmt.Fprintln(os.Stderr, api.AnalyzeMetafile(r.Metafile, api.AnalyzeMetafileOptions{}))
	}
	if len(r.Errors) > 0 {
		msgs := api.FormatMessages(r.Errors, api.FormatMessagesOptions{Kind: api.ErrorMessage})
		return nil, fmt.Errorf("esbuild:\n%s", strings.Join(msgs, "\n"))
	}
	if len(r.OutputFiles) != 1 {
		return nil, fmt.Errorf("esbuild wrote %d files, want 1", len(r.OutputFiles))
	}
	return r.OutputFiles[0].Contents, nil
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		panic(err)
	}
	return a
}
