package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestMakeBundle runs the release path a user runs, `make bundle`, for the
// host architecture into a temporary dist directory: make dist (static,
// -trimpath binaries), deploy/mkbundle (the tarball with the SBOM and
// both checksum files) and make verify-bundle (the host's own `unigate
// verify` of the tarball and sha256sum -c). The other architectures are
// the same commands with another GOARCH (their binaries run under qemu in
// cmd/unigate's TestQEMUSmoke). It needs make and a git checkout (the
// version and the build date come from git).
func TestMakeBundle(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the release binaries; skipped with -short")
	}
	makeBin := needTool(t, "make", "make")
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, ".git")); err != nil {
		t.Skipf("SKIPPED LOUDLY: %s is not a git checkout (make bundle stamps the commit): %v", root, err)
	}
	dist := t.TempDir()
	const version = "v0.0.0-test"
	cmd := exec.Command(makeBin, "--no-print-directory", "bundle", "ARCHES="+runtime.GOARCH, "DIST="+dist, "VERSION="+version)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make bundle: %v\n%s", err, out)
	}
	tarball := filepath.Join(dist, "unigate-"+version+"-linux-"+runtime.GOARCH+".tar.gz")
	if _, err := os.Stat(tarball); err != nil {
		t.Fatalf("make bundle wrote no %s: %v\n%s", tarball, err, out)
	}
	// verify-bundle ran (the last step of the target): unigate verify's
	// verdict and sha256sum -c's line for the tarball.
	for _, want := range []string{"OK", filepath.Base(tarball) + ": OK"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("make bundle output has no %q:\n%s", want, out)
		}
	}
	// The binary in dist is the static release build.
	v, err := exec.Command(filepath.Join(dist, "linux-"+runtime.GOARCH, "unigate"), "version").CombinedOutput()
	if err != nil || !strings.Contains(string(v), version) || !strings.Contains(string(v), "CGO_ENABLED=0") {
		t.Errorf("dist unigate version: %v\n%s", err, v)
	}
}
