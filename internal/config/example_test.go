package config

import (
	"flag"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestExampleLoadsToDefault(t *testing.T) {
	got := mustLoad(t, Example())
	if !reflect.DeepEqual(got, Default()) {
		t.Errorf("Example() loads to\n%+v\nwant Default()\n%+v", got, Default())
	}
}

// TestExampleNamesEveryField checks that Example sets every leaf field
// explicitly, so it stays the complete reference when a field is added.
func TestExampleNamesEveryField(t *testing.T) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(Example()), &doc); err != nil {
		t.Fatal(err)
	}
	present := map[string]bool{}
	var walk func(n *yaml.Node, prefix string)
	walk = func(n *yaml.Node, prefix string) {
		for i := 0; i+1 < len(n.Content); i += 2 {
			path := prefix + n.Content[i].Value
			if v := n.Content[i+1]; v.Kind == yaml.MappingNode {
				walk(v, path+".")
			} else {
				present[path] = true
			}
		}
	}
	walk(doc.Content[0], "")
	c := Default()
	for _, f := range leaves(reflect.ValueOf(&c)) {
		if !present[f.path] {
			t.Errorf("Example() lacks %s", f.path)
		}
	}
}

func TestEnvNamesAreUnique(t *testing.T) {
	seen := map[string]string{}
	c := Default()
	for _, f := range leaves(reflect.ValueOf(&c)) {
		name := envName(f.path)
		if other, dup := seen[name]; dup {
			t.Errorf("%s and %s both map to %s", other, f.path, name)
		}
		seen[name] = f.path
	}
	if _, dup := seen[EnvConfigFile]; dup {
		t.Errorf("a field maps to the reserved %s", EnvConfigFile)
	}
}

// TestDocsAreCurrent checks that docs/configuration.md quotes Example
// verbatim and lists every environment variable.
func TestDocsAreCurrent(t *testing.T) {
	data, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	if !strings.Contains(doc, "```yaml\n"+Example()+"```\n") {
		t.Error("docs/configuration.md does not quote Example() in a yaml block; paste internal/config/example.yaml")
	}
	c := Default()
	for _, f := range leaves(reflect.ValueOf(&c)) {
		if !strings.Contains(doc, "`"+envName(f.path)+"`") {
			t.Errorf("docs/configuration.md does not list `%s`", envName(f.path))
		}
	}
	for _, ff := range flagFields {
		if !strings.Contains(doc, "`-"+flagName(ff.path)+"`") {
			t.Errorf("docs/configuration.md does not list `-%s`", flagName(ff.path))
		}
	}
}

func ExampleLoad() {
	dir, _ := os.MkdirTemp("", "unigate")
	defer os.RemoveAll(dir)
	path := dir + "/unigate.yaml"
	_ = os.WriteFile(path, []byte("listen: :8000\nlog:\n  level: warn\n"), 0o600)

	fs := flag.NewFlagSet("unigate", flag.ContinueOnError)
	cfg := Default()
	cfg.RegisterFlags(fs)
	_ = fs.Parse([]string{"-log-level", "debug"})

	cfg, err := Load(path, []string{"UNIGATE_LISTEN=:9000", "UNIGATE_LOG_LEVEL=error"})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := cfg.ApplyFlags(fs); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(cfg.Listen, cfg.Log.Level, cfg.Validate())
	// Output: :9000 debug <nil>
}
