package config

import (
	"bytes"
	"flag"
	"io"
	"strings"
	"testing"
)

func newFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("unigate", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func TestRegisterFlags(t *testing.T) {
	c := Default()
	fs := newFlagSet()
	c.RegisterFlags(fs)
	err := fs.Parse([]string{
		"-listen", ":7000", "-admin-listen=", "-data-dir", "/srv/unigate",
		"-log-level", "debug", "-log-format=json", "rest",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Listen, want.Admin.Listen, want.DataDir = ":7000", "", "/srv/unigate"
	want.Log = LogConfig{Level: "debug", Format: "json"}
	if c.Listen != want.Listen || c.Admin != want.Admin || c.DataDir != want.DataDir || c.Log != want.Log {
		t.Errorf("got %+v", c)
	}
	if got := fs.Args(); len(got) != 1 || got[0] != "rest" {
		t.Errorf("Args = %q", got)
	}
}

func TestRegisterFlagsNamesEveryField(t *testing.T) {
	c := Default()
	fs := newFlagSet()
	c.RegisterFlags(fs)
	for _, name := range []string{"listen", "admin-listen", "data-dir", "log-level", "log-format"} {
		if fs.Lookup(name) == nil {
			t.Errorf("no -%s flag", name)
		}
	}
}

func TestFlagHelpShowsDefaults(t *testing.T) {
	c := Default()
	fs := newFlagSet()
	var out bytes.Buffer
	fs.SetOutput(&out)
	c.RegisterFlags(fs)
	fs.PrintDefaults()
	for _, want := range []string{
		`-listen address`, `(default :8080)`,
		`-admin-listen address`, `(default 127.0.0.1:9090)`,
		`-log-level level`, `(default info)`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestApplyFlagsReplaysOnlySetFlags(t *testing.T) {
	parsed := Default()
	fs := newFlagSet()
	parsed.RegisterFlags(fs)
	other := fs.String("other", "", "")
	if err := fs.Parse([]string{"-log-level", "warn", "-other", "x"}); err != nil {
		t.Fatal(err)
	}
	loaded := Default()
	loaded.Listen = ":5555" // from a file, say
	if err := loaded.ApplyFlags(fs); err != nil {
		t.Fatal(err)
	}
	if loaded.Log.Level != "warn" || loaded.Listen != ":5555" || *other != "x" {
		t.Errorf("after ApplyFlags: %+v", loaded)
	}
}

func TestFlagBoolField(t *testing.T) {
	c := Default()
	f := &fieldFlag{cfg: &c, path: "reuse_port"}
	if !f.IsBoolFlag() {
		t.Fatal("reuse_port is not a bool flag")
	}
	if (&fieldFlag{cfg: &c, path: "listen"}).IsBoolFlag() {
		t.Error("listen is a bool flag")
	}
	if err := f.Set("true"); err != nil || !c.ReusePort {
		t.Errorf("Set(true): %v, %v", err, c.ReusePort)
	}
	var zero fieldFlag
	if zero.String() != "" || zero.IsBoolFlag() {
		t.Error("zero fieldFlag is not inert")
	}
}

func TestFlagErrors(t *testing.T) {
	c := Default()
	f := &fieldFlag{cfg: &c, path: "websocket.idle_timeout"}
	wantErr(t, f.Set("soon"), ErrBadValue, "duration")
	if c.WebSocket.IdleTimeout != Default().WebSocket.IdleTimeout {
		t.Error("failed Set changed the field")
	}
	f = &fieldFlag{cfg: &c, path: "event_loops"}
	wantErr(t, f.Set("-x"), ErrBadValue, "integer")
}
