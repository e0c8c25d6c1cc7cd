package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeConfig writes a YAML file into a fresh temporary directory and
// returns its path.
func writeConfig(tb testing.TB, content string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "unigate.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// mustLoad loads a YAML document and environment, failing the test on
// error.
func mustLoad(tb testing.TB, yaml string, environ ...string) Config {
	tb.Helper()
	path := ""
	if yaml != "" {
		path = writeConfig(tb, yaml)
	}
	c, err := Load(path, environ)
	if err != nil {
		tb.Fatalf("Load: %v", err)
	}
	return c
}

// wantErr checks that err wraps target and its text contains every
// fragment.
func wantErr(tb testing.TB, err, target error, fragments ...string) {
	tb.Helper()
	if err == nil {
		tb.Fatalf("got no error, want %v", target)
	}
	if !errors.Is(err, target) {
		tb.Errorf("error %q does not wrap %v", err, target)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			tb.Errorf("error %q does not mention %q", err, f)
		}
	}
}
