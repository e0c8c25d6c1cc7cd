package api_test

import (
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestDocs: docs/openapi.yaml is valid YAML declaring OpenAPI 3.1 with
// every route, and docs/api.md documents each with a curl example.
func TestDocs(t *testing.T) {
	raw, err := os.ReadFile("../docs/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(raw, &spec); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(spec.OpenAPI, "3.1") {
		t.Errorf("openapi %q, want 3.1.x", spec.OpenAPI)
	}
	md, err := os.ReadFile("../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	routes := map[string][]string{
		"/conversations":               {"get"},
		"/conversations/{id}":          {"get"},
		"/conversations/{id}/messages": {"get", "post"},
		"/conversations/{id}/transfer": {"post"},
		"/conversations/{id}/close":    {"post"},
		"/agents":                      {"get"},
	}
	for path, methods := range routes {
		for _, m := range methods {
			if _, ok := spec.Paths[path][m]; !ok {
				t.Errorf("openapi.yaml lacks %s %s", m, path)
			}
			if head := "### `" + strings.ToUpper(m) + " /api/v1" + path + "`"; !strings.Contains(string(md), head) {
				t.Errorf("api.md lacks a section %s", head)
			}
		}
	}
	if n := strings.Count(string(md), "curl "); n < 7 {
		t.Errorf("api.md has %d curl examples", n)
	}
}
