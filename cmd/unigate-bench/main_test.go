package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestHelp: every subcommand explains its flags with -h and exits 0.
func TestHelp(t *testing.T) {
	for _, cmd := range []string{"idle", "chat", "storm", "admission", "sweep", "fanout", "echo", "open", "compare"} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{cmd, "-h"}, strings.NewReader(""), &out, &errOut); code != 0 {
			t.Errorf("%s -h: exit %d\n%s", cmd, code, errOut.String())
		}
		help := out.String() + errOut.String()
		if cmd != "compare" && !strings.Contains(help, "-url") {
			t.Errorf("%s -h does not document -url:\n%s", cmd, help)
		}
	}
	var out bytes.Buffer
	if code := run(context.Background(), []string{"help"}, strings.NewReader(""), &out, &out); code != 0 || !strings.Contains(out.String(), "unigate-bench echo") {
		t.Errorf("help: exit %d\n%s", code, out.String())
	}
}

// TestUsageErrors: bad command lines exit 2 (usage) before any network.
func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"nosuch"},
		{"echo", "-rate", "1000", "-rates", "1000,2000"},
		{"echo", "-nosuchflag"},
		{"echo", "extra-argument"},
		{"sweep", "-rates", "1000", "-from", "1000"},
		{"compare", "only-one.json"},
	} {
		var out bytes.Buffer
		if code := run(context.Background(), args, strings.NewReader(""), &out, &out); code != 2 {
			t.Errorf("%q: exit %d, want 2\n%s", args, code, out.String())
		}
	}
	// A configuration error is an error (1), with its reason.
	var out bytes.Buffer
	if code := run(context.Background(), []string{"echo", "-size", "10", "-quiet"}, strings.NewReader(""), &out, &out); code != 1 ||
		!strings.Contains(out.String(), "-size 10") {
		t.Errorf("echo -size 10: exit %d\n%s", code, out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"open"}, strings.NewReader(""), &out, &out); code != 1 || !strings.Contains(out.String(), "tenant") {
		t.Errorf("open without -tenant: exit %d\n%s", code, out.String())
	}
}
