package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/unigate/unigate/deploy/bundle"
)

// TestVerifyCommand runs `unigate verify` on a good bundle, a tampered
// one and something that is no bundle at all: exit status and report.
func TestVerifyCommand(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	write := func(name string, files []bundle.File) string {
		var b bytes.Buffer
		if err := bundle.Write(&b, "unigate-v0-linux-amd64", files, time.Unix(1700000000, 0)); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	files := []bundle.File{{Path: "bin/unigate", Mode: 0o755, Data: []byte("binary")}, {Path: "etc/unigate.yaml", Data: []byte("listen: \":8080\"\n")}}
	good := write("good.tar.gz", files)
	run := func(args ...string) (string, int) {
		out, err := exec.Command(bin, append([]string{"verify"}, args...)...).CombinedOutput()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return string(out), 0
		case errors.As(err, &ee):
			return string(out), ee.ExitCode()
		}
		t.Fatal(err)
		return "", -1
	}
	out, code := run(good)
	if code != 0 || !strings.Contains(out, "OK: 2 files match SHA256SUMS (SHA-256) and SM3SUMS (SM3)") {
		t.Fatalf("good bundle: exit %d\n%s", code, out)
	}
	// A bundle whose binary was replaced after the lists were written:
	// rebuild it with the lists of the good one.
	rep, err := bundle.VerifyFile(good)
	if err != nil || !rep.OK() {
		t.Fatal(rep, err)
	}
	bad := filepath.Join(dir, "bad")
	if err := exec.Command("tar", "-C", dir, "-xzf", good).Run(); err != nil {
		t.Skipf("tar: %v", err)
	}
	top := filepath.Join(dir, "unigate-v0-linux-amd64")
	if err := os.WriteFile(filepath.Join(top, "bin", "unigate"), []byte("trojan"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("tar", "-C", dir, "-czf", bad, "unigate-v0-linux-amd64").Run(); err != nil {
		t.Fatal(err)
	}
	out, code = run(good, bad)
	if code != 1 || !strings.Contains(out, "good.tar.gz: OK") ||
		!strings.Contains(out, "MODIFIED bin/unigate (SHA256SUMS line 1): SHA-256 is") ||
		!strings.Contains(out, "MODIFIED bin/unigate (SM3SUMS line 1): SM3 is") ||
		!strings.Contains(out, "verification failed: 1 of 2 bundle(s)") {
		t.Fatalf("tampered bundle: exit %d\n%s", code, out)
	}
	// The unpacked directory is checked the same way.
	if out, code = run(top); code != 1 || !strings.Contains(out, "MODIFIED bin/unigate") {
		t.Fatalf("tampered directory: exit %d\n%s", code, out)
	}
	if out, code = run(filepath.Join(top, "etc", "unigate.yaml")); code != 1 || !strings.Contains(out, "not a bundle") {
		t.Fatalf("not a bundle: exit %d\n%s", code, out)
	}
	if out, code = run(); code != 2 {
		t.Fatalf("no argument: exit %d\n%s", code, out)
	}
}

// TestSBOMCommand: `unigate sbom` is CycloneDX JSON naming the modules
// linked into this very binary.
func TestSBOMCommand(t *testing.T) {
	bin := buildBinary(t)
	out, err := exec.Command(bin, "sbom").Output()
	if err != nil {
		t.Fatal(err)
	}
	var bom struct {
		BOMFormat string `json:"bomFormat"`
		Metadata  struct {
			Component struct{ Name, Version string }
		}
		Components []struct{ Name, Version, Purl string }
	}
	if err := json.Unmarshal(out, &bom); err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, c := range bom.Components {
		names[c.Name] = c.Version
	}
	if bom.BOMFormat != "CycloneDX" || bom.Metadata.Component.Name != "unigate" ||
		names["github.com/panjf2000/gnet/v2"] == "" || names["github.com/emmansun/gmsm"] == "" || names["github.com/nats-io/nats-server/v2"] == "" {
		t.Fatalf("sbom: %s", out)
	}
	if _, linked := names["sigs.k8s.io/kustomize/api"]; linked {
		t.Fatal("a test-only module is in the binary's SBOM")
	}
}
