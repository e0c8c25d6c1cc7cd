package config

import (
	"flag"
	"fmt"
	"reflect"
)

// flagFields are the fields that get a command-line flag: the ones an
// operator changes per run. Everything else is in the file or the
// environment. The flag name is derived from the path (see flagName).
var flagFields = []struct{ path, usage string }{
	{"listen", "public WebSocket `address` (host:port)"},
	{"admin.listen", "admin HTTP `address` for /metrics and /debug/pprof/; empty disables it"},
	{"data_dir", "`directory` holding the HMAC key"},
	{"log.level", "log `level`: debug, info, warn or error"},
	{"log.format", "log `format`: text or json"},
}

// RegisterFlags defines -listen, -admin-listen, -data-dir, -log-level and
// -log-format on fs. Parsing fs writes them into c; the defaults shown by
// -help are c's current values. The -config flag is the caller's.
//
// To keep flags above the file and the environment when c is loaded after
// parsing (the usual order, since -config names the file), call ApplyFlags
// on the loaded Config.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	for _, ff := range flagFields {
		fs.Var(&fieldFlag{cfg: c, path: ff.path}, flagName(ff.path), ff.usage)
	}
}

// ApplyFlags writes into c the flags of fs that were set on the command
// line and were defined by RegisterFlags (on any Config).
func (c *Config) ApplyFlags(fs *flag.FlagSet) error {
	var err error
	fs.Visit(func(f *flag.Flag) {
		ff, ok := f.Value.(*fieldFlag)
		if !ok || err != nil {
			return
		}
		err = (&fieldFlag{cfg: c, path: ff.path}).Set(ff.raw)
		if err != nil {
			err = fmt.Errorf("flag -%s: %w", f.Name, err)
		}
	})
	return err
}

// fieldFlag is a flag.Value bound to one field of a Config. It remembers
// the text it was given so ApplyFlags can replay it onto another Config.
type fieldFlag struct {
	cfg  *Config
	path string
	raw  string
}

func (f *fieldFlag) field() reflect.Value {
	v, ok := lookup(reflect.ValueOf(f.cfg), f.path)
	if !ok {
		panic("config: no field " + f.path) // flagFields is out of date
	}
	return v
}

// String returns the field's current value. The zero fieldFlag, which the
// flag package creates to detect zero defaults, returns "".
func (f *fieldFlag) String() string {
	if f == nil || f.cfg == nil {
		return ""
	}
	return formatString(f.field())
}

// Set parses s into the field.
func (f *fieldFlag) Set(s string) error {
	if err := setString(f.field(), s); err != nil {
		return fmt.Errorf("%w: %v", ErrBadValue, err)
	}
	f.raw = s
	return nil
}

// IsBoolFlag lets a boolean field be set with -name alone.
func (f *fieldFlag) IsBoolFlag() bool {
	return f != nil && f.cfg != nil && f.field().Kind() == reflect.Bool
}
