package deploy

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// urlRE finds http(s) URLs in text and in a binary's strings.
var urlRE = regexp.MustCompile(`https?://([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|localhost|\[[0-9a-fA-F:]+\])`)

// localHost reports whether host is one that never leaves the machine or
// is reserved for documentation (RFC 2606, RFC 6761).
func localHost(host string) bool {
	host = strings.ToLower(host)
	switch host {
	case "localhost", "127.0.0.1", "[::1]", "example.com", "example.org", "example.net":
		return true
	}
	for _, suffix := range []string{".example.com", ".example.org", ".example.net", ".example", ".invalid", ".test", ".localhost"} {
		if strings.HasSuffix(host, suffix) {
			return true
		}
	}
	return false
}

// binaryHosts are the hosts named in the strings of the release binaries,
// each reviewed: none is dialled, they are identifiers and texts of error
// messages. A host that appears after a dependency change fails
// TestBinaryNamesNoNewHost until someone has checked what uses it.
var binaryHosts = map[string]string{
	"cyclonedx.org": "the CycloneDX JSON schema identifier ($schema) in `unigate sbom` output; never fetched",
	"github.com":    "links to issues in panic and error texts (Go runtime, protobuf, NATS)",
	"go.dev":        "links in Go runtime and toolchain error texts",
	"docs.nats.io":  "links in NATS server log and error texts",
	"nats.io":       "NATS server banner text",
	"protobuf.dev":  "link in a protobuf error text",
	"www.w3.org":    "XML namespace identifiers (encoding/xml, cyclonedx-go)",
}

// telemetryRE names what an offline deployment must never contain, even
// in a reviewed host: telemetry, analytics, update checks, CDNs.
var telemetryRE = regexp.MustCompile(`(?i)telemetry|analytics|tracking|sentry|segment\.io|mixpanel|amplitude|datadog|newrelic|googletagmanager|doubleclick|checkpoint|update|upgrade|releases|cdn|jsdelivr|unpkg|cdnjs|fonts\.googleapis`)

// TestEmbeddedAssetsAreOffline reads every file that any package linked
// into unigate or unigate-bench embeds (//go:embed: web assets, templates,
// the example configuration, whatever is added later) and fails on a URL
// whose host is not local or reserved for examples: an embedded page
// must not load a script, a font or an image from a CDN.
// xmlNamespaces are the namespace names a page may use (an inline SVG):
// identifiers that look like URLs but are never requested.
var xmlNamespaces = []string{"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xhtml", "http://www.w3.org/1999/xlink"}

func TestEmbeddedAssetsAreOffline(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath,Dir,Module,EmbedFiles", "../cmd/unigate", "../cmd/unigate-bench").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	ours, theirs := 0, 0
	for {
		var p struct {
			ImportPath, Dir string
			Module          *struct{ Path string }
			EmbedFiles      []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		project := p.Module != nil && p.Module.Path == "github.com/unigate/unigate"
		for _, f := range p.EmbedFiles {
			data, err := os.ReadFile(filepath.Join(p.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if !project {
				theirs++
				for _, m := range urlRE.FindAllSubmatch(data, -1) {
					if telemetryRE.Match(m[0]) {
						t.Errorf("%s embeds %s, which names %s", p.ImportPath, f, m[0])
					}
				}
				continue
			}
			ours++
			// XML namespace names are identifiers, never fetched.
			for _, ns := range xmlNamespaces {
				data = bytes.ReplaceAll(data, []byte(ns), nil)
			}
			for _, m := range urlRE.FindAllSubmatch(data, -1) {
				if !localHost(string(m[1])) {
					t.Errorf("%s: embedded %s references %s: embedded assets must not reach the network", p.ImportPath, f, m[0])
				}
			}
		}
	}
	if ours == 0 {
		t.Fatal("no embedded file found in the project: go list failed to report them?")
	}
	t.Logf("checked %d embedded files of the project and %d of dependencies", ours, theirs)
}

// TestBinaryNamesNoNewHost builds the release binary for this machine and
// lists every http(s) host in its strings: each must be local, reserved
// for examples, or reviewed in binaryHosts, and none may look like
// telemetry, an update check or a CDN.
func TestBinaryNamesNoNewHost(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the release binaries; skipped with -short")
	}
	dir := t.TempDir()
	build := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags", "-s -w", "-o", dir+"/",
		"../cmd/unigate", "../cmd/unigate-bench")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, bin := range []string{"unigate", "unigate-bench"} {
		data, err := os.ReadFile(filepath.Join(dir, bin))
		if err != nil {
			t.Fatal(err)
		}
		hosts := map[string]bool{}
		for _, m := range urlRE.FindAllSubmatch(data, -1) {
			host := strings.ToLower(string(m[1]))
			if telemetryRE.Match(m[0]) {
				t.Errorf("%s names %s: no telemetry, update check or CDN in an offline gateway", bin, m[0])
			}
			if localHost(host) {
				continue
			}
			if _, ok := binaryHosts[host]; !ok && !hosts[host] {
				t.Errorf("%s names a new host %s (%s): check that nothing dials it, then add it to binaryHosts with the reason", bin, host, m[0])
			}
			hosts[host] = true
		}
		names := make([]string, 0, len(hosts))
		for h := range hosts {
			names = append(names, h)
		}
		slices.Sort(names)
		t.Logf("%s names %d external hosts, all reviewed: %s", bin, len(names), strings.Join(names, ", "))
	}
}
