package supervisor

import (
	"errors"
	"slices"
	"testing"

	"github.com/unigate/unigate/backends"
)

func TestPluginEnviron(t *testing.T) {
	host := []string{"PATH=/bin", "UNIGATE_AUTH_KEY_FILE=/secret", "HOME=/root", "UNIGATE_X=1", "UNIGATEX=kept", "unigate_lower=kept"}
	got := PluginEnviron(host, []string{"HOME=/plugin", "UNIGATE_PASSED=yes"})
	want := []string{"PATH=/bin", "HOME=/root", "UNIGATEX=kept", "unigate_lower=kept", "HOME=/plugin", "UNIGATE_PASSED=yes"}
	if !slices.Equal(got, want) {
		t.Fatalf("PluginEnviron = %q, want %q", got, want)
	}
}

// TestNewRefusesBadEnv: a malformed entry, or one the handshake sets,
// fails at construction, before any process is started.
func TestNewRefusesBadEnv(t *testing.T) {
	for _, env := range [][]string{
		{"NOVALUE"},
		{"=x"},
		{"K=a\x00b"},
		{backends.Handshake.MagicCookieKey + "=x"},
		{"PLUGIN_MIN_PORT=1"},
	} {
		if _, err := NewHook(Config{Path: "/bin/true", Env: env}); err == nil {
			t.Errorf("NewHook with Env %q succeeded", env)
		} else if errors.Is(err, ErrClosed) {
			t.Errorf("NewHook with Env %q: %v", env, err)
		}
	}
}
