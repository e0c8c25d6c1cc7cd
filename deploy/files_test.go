package deploy

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/unigate/unigate/deploy/bundle"
	"github.com/unigate/unigate/internal/config"
)

// needTool returns the path of a command, skipping loudly outside CI and
// failing under CI (CI=true) when it is missing.
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing under CI (apt-get install %s; .ci/run installs it)", name, pkg)
		}
		t.Skipf("SKIPPED LOUDLY: %s not installed (apt-get install %s)", name, pkg)
	}
	return p
}

// TestSystemdUnit runs systemd-analyze verify on the unit (any message,
// even a warning such as an unknown key, fails) and its offline security
// analysis.
func TestSystemdUnit(t *testing.T) {
	sa := needTool(t, "systemd-analyze", "systemd")
	unit, err := os.ReadFile(filepath.Join("systemd", "unigate.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"\nLimitNOFILE=1048576\n", "\nUser=unigate\n", "\nNoNewPrivileges=yes\n", "\nProtectSystem=strict\n",
		"\nReadWritePaths=/var/lib/unigate\n", "\nStateDirectory=unigate\n", "\nKillSignal=SIGTERM\n",
	} {
		if !bytes.Contains(unit, []byte(want)) {
			t.Errorf("the unit lacks %q", strings.TrimSpace(want))
		}
	}
	// verify checks that ExecStart is executable: point it at this test
	// binary, which exists wherever the test runs.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "unigate.service")
	if err := os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/local/bin/unigate"), []byte(self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Exposure 0 (locked down) to 10 (unprotected); fail above 2.5.
	out, err = exec.Command(sa, "security", "--offline=true", "--threshold=25", "--no-pager", path).CombinedOutput()
	level := regexp.MustCompile(`Overall exposure level for unigate.service: ([0-9.]+)`).FindSubmatch(out)
	if err != nil || level == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	t.Logf("systemd-analyze security: exposure %s", level[1])
}

// TestSysctlFile: every setting has the sentence that says why right above
// it, and is a key=value line that sysctl reads.
func TestSysctlFile(t *testing.T) {
	f, err := os.ReadFile(filepath.Join("sysctl", "99-unigate.conf"))
	if err != nil {
		t.Fatal(err)
	}
	setting := regexp.MustCompile(`^-?[a-z0-9_]+(\.[a-z0-9_-]+)+ = [0-9]+( [0-9]+)*$`)
	keys := map[string]bool{}
	var prev string
	sc := bufio.NewScanner(bytes.NewReader(f))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case !setting.MatchString(line):
			t.Errorf("line %d: %q is not key = value", n, line)
		case !strings.HasPrefix(prev, "# ") || len(prev) < 30:
			t.Errorf("line %d: %q has no sentence above it saying why", n, line)
		default:
			keys[strings.TrimPrefix(strings.Fields(line)[0], "-")] = true
		}
		prev = line
	}
	for _, k := range []string{"net.core.somaxconn", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_mem", "fs.file-max", "fs.nr_open"} {
		if !keys[k] {
			t.Errorf("%s is not set", k)
		}
	}
}

// TestDockerfile: FROM scratch only (nothing pulled), nothing run at build
// time (scratch has no shell), a numeric non-root user, and every COPY
// source is one build.sh puts in the context.
func TestDockerfile(t *testing.T) {
	df, err := os.ReadFile(filepath.Join("docker", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	build, err := os.ReadFile(filepath.Join("docker", "build.sh"))
	if err != nil {
		t.Fatal(err)
	}
	var from, user []string
	for line := range strings.Lines(string(df)) {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			from = append(from, f[1])
		case "USER":
			user = append(user, f[1])
		case "RUN", "ADD":
			t.Errorf("%q: a scratch image runs and downloads nothing at build time", strings.TrimSpace(line))
		case "COPY":
			src := f[len(f)-2]
			src = strings.ReplaceAll(src, "${TARGETARCH}", "$arch")
			if !strings.Contains(string(build), `$ctx/`+strings.TrimSuffix(src, "/")) {
				t.Errorf("COPY %s: build.sh does not put it in the context", src)
			}
		}
	}
	if len(from) != 1 || from[0] != "scratch" {
		t.Errorf("FROM %v, want scratch only", from)
	}
	if len(user) != 1 || !regexp.MustCompile(`^[1-9][0-9]*:[1-9][0-9]*$`).MatchString(user[0]) {
		t.Errorf("USER %v, want one numeric non-root uid:gid", user)
	}
}

// TestBundledConfig: etc/unigate.yaml of the bundle loads and validates,
// and puts the data where the systemd unit lets the service write.
func TestBundledConfig(t *testing.T) {
	data, err := bundle.Config(config.Example())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "unigate.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, nil)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(filepath.Join("systemd", "unigate.service"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != bundle.DataDir || !bytes.Contains(unit, []byte("ReadWritePaths="+bundle.DataDir+"\n")) ||
		!bytes.Contains(unit, []byte("-config /etc/unigate/unigate.yaml")) {
		t.Fatalf("data_dir %q; the unit must write there and read /etc/unigate/unigate.yaml", cfg.DataDir)
	}
}
