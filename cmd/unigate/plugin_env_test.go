package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/internal/config"
)

// TestPluginArgsAndEnv runs `unigate serve` with a hook plugin whose
// arguments and environment come from the configuration (here its
// UNIGATE_BACKENDS_HOOK_PLUGIN_ARGS and _ENV variables): the plugin
// process gets exactly those arguments, the variables configured for it,
// the gateway's environment without its UNIGATE_* variables, and the
// handshake cookie go-plugin adds.
func TestPluginArgsAndEnv(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	t.Cleanup(func() { killPlugins(t, dir) })
	// The hook directory reaches the plugin through hook_plugin_env only.
	t.Setenv(testHookEnv, "")
	os.Unsetenv(testHookEnv)
	t.Setenv("UGTEST_INHERITED", "from the gateway")
	t.Setenv("UNIGATE_BACKENDS_HOOK_PLUGIN", os.Args[0])
	t.Setenv("UNIGATE_BACKENDS_HOOK_PLUGIN_ARGS", "-test.run=^$, two words ,--flag=x=y")
	t.Setenv("UNIGATE_BACKENDS_HOOK_PLUGIN_ENV", testHookEnv+"="+dir+",UGTEST_COLOR=blue,UGTEST_INHERITED=overridden,UNIGATE_PASSED=on purpose")
	n := startNode(t, bin, t.TempDir())
	defer n.term()

	var pid string
	waitUntil(t, 20*time.Second, "the hook plugin to start", func() bool {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if p, ok := strings.CutPrefix(e.Name(), "pid."); ok {
				pid = p
			}
		}
		return pid != ""
	})
	args, err := os.ReadFile(filepath.Join(dir, "args."+pid))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Split(string(args), "\n"), []string{"-test.run=^$", "two words", "--flag=x=y"}; !slices.Equal(got, want) {
		t.Fatalf("plugin arguments %q, want %q", got, want)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "env."+pid))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for kv := range strings.SplitSeq(string(raw), "\n") {
		k, v, _ := strings.Cut(kv, "=")
		if _, dup := env[k]; dup {
			t.Errorf("the plugin's environment has %s twice", k)
		}
		env[k] = v
	}
	for k, want := range map[string]string{
		testHookEnv:                       dir,
		"UGTEST_COLOR":                    "blue",
		"UGTEST_INHERITED":                "overridden", // the configured value wins
		"UNIGATE_PASSED":                  "on purpose", // configured explicitly: passed
		backends.Handshake.MagicCookieKey: backends.Handshake.MagicCookieValue,
		"PATH":                            os.Getenv("PATH"), // inherited
	} {
		if got, ok := env[k]; !ok || got != want {
			t.Errorf("plugin environment %s = %q (set: %v), want %q", k, got, ok, want)
		}
	}
	for k := range env {
		if strings.HasPrefix(k, "UNIGATE_") && k != "UNIGATE_PASSED" && k != backends.Handshake.MagicCookieKey {
			t.Errorf("the gateway's %s reached the plugin", k)
		}
	}
	if t.Failed() {
		t.Logf("plugin environment:\n%s", raw)
	}
}

// TestPluginEnvCookieReserved: the configuration refuses to set the
// variable of go-plugin's handshake (config cannot import backends, so
// it names the cookie itself: this keeps the two in step).
func TestPluginEnvCookieReserved(t *testing.T) {
	if _, err := config.CheckPluginEnv(backends.Handshake.MagicCookieKey + "=x"); err == nil {
		t.Fatalf("config.CheckPluginEnv accepts %s", backends.Handshake.MagicCookieKey)
	}
}
