package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	"go.yaml.in/yaml/v3"
)

// TestAlertRulesShape: the rules file is the Prometheus rule-file format,
// every rule with an expression, a severity and a summary.
func TestAlertRulesShape(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "monitoring", "prometheus-alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert, Expr, For string
				Labels           map[string]string
				Annotations      map[string]string
			}
		}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || seen[r.Alert] {
				t.Errorf("rule %q: no name, no expression or a duplicate", r.Alert)
			}
			seen[r.Alert] = true
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("rule %s: needs a severity, a summary and a description", r.Alert)
			}
		}
	}
	if len(seen) < 5 {
		t.Fatalf("only %d rules", len(seen))
	}
}

// TestMonitoringUsesExportedMetrics checks the Grafana dashboard and the
// Prometheus alert rules in deploy/monitoring against what a running
// gateway exports: every unigate_, go_ and process_ metric they name, and
// every label value they select, must exist.
func TestMonitoringUsesExportedMetrics(t *testing.T) {
	startGateway(t)
	var exp bytes.Buffer
	metrics.WritePrometheus(&exp, true)
	series := map[string][]string{} // metric name -> label sets
	for line := range strings.Lines(exp.String()) {
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		name, labels, _ := strings.Cut(strings.Fields(line)[0], "{")
		series[name] = append(series[name], labels)
	}
	nameRE := regexp.MustCompile(`\b((?:unigate|go|process)_[a-z0-9_]+)`)
	selRE := regexp.MustCompile(`\b(unigate_[a-z0-9_]+)\{([^}]*)\}`)
	matcherRE := regexp.MustCompile(`(\w+)\s*(=~|=)\s*\\?"([^"\\]*)\\?"`)
	for _, f := range []string{"grafana-dashboard.json", "prometheus-alerts.yaml"} {
		data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "monitoring", f))
		if err != nil {
			t.Fatal(err)
		}
		used := map[string]bool{}
		for _, m := range nameRE.FindAllStringSubmatch(string(data), -1) {
			name := m[1]
			if _, ok := series[name]; !ok {
				t.Errorf("%s uses %s, which the gateway does not export", f, name)
			}
			used[name] = true
		}
		for _, m := range selRE.FindAllStringSubmatch(string(data), -1) {
			for _, mm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
				label, values := mm[1], mm[3]
				if label == "instance" || label == "job" || strings.ContainsAny(values, "$.*+?()[]") {
					continue
				}
				for v := range strings.SplitSeq(values, "|") {
					want := label + `="` + v + `"`
					found := false
					for _, ls := range series[m[1]] {
						found = found || strings.Contains(ls, want)
					}
					if !found {
						t.Errorf("%s selects %s{%s}, which the gateway never exports", f, m[1], want)
					}
				}
			}
		}
		t.Logf("%s: %d metrics, all exported", f, len(used))
	}
}
