package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to Load as a configuration file. Load
// must never panic or hang; when it succeeds, loading again gives the same
// Config and Validate does not panic. Seeds are in testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(Example()))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "unigate.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path, nil)
		if err != nil {
			if err.Error() == "" {
				t.Error("empty error message")
			}
			return
		}
		_ = c.Validate()
		again, err := Load(path, nil)
		if err != nil || !reflect.DeepEqual(c, again) {
			t.Errorf("second Load differs: %v", err)
		}
	})
}
