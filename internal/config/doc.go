// Package config holds the Unigate application configuration: one plain
// struct, filled from defaults, then a YAML file, then UNIGATE_*
// environment variables, then command-line flags, each layer overriding the
// one before.
//
// # Usage
//
//	cfg := config.Default()
//	fs := flag.NewFlagSet("unigate", flag.ContinueOnError)
//	path := fs.String("config", "", "YAML configuration file")
//	cfg.RegisterFlags(fs) // -help shows the defaults
//	if err := fs.Parse(args); err != nil {
//		return err
//	}
//	cfg, err := config.Load(*path, os.Environ()) // defaults < file < env
//	if err != nil {
//		return err
//	}
//	if err := cfg.ApplyFlags(fs); err != nil { // < flags
//		return err
//	}
//	if err := cfg.Validate(); err != nil {
//		return err
//	}
//	logger := cfg.Logger(os.Stderr)
//
// # Names
//
// Every field has a YAML key (its yaml tag). A nested field's path joins the
// keys with dots: websocket.idle_timeout. Its environment variable is
// "UNIGATE_" followed by the path in upper case with dots replaced by
// underscores: UNIGATE_WEBSOCKET_IDLE_TIMEOUT. Flags exist for the most used
// fields only; their names are the path with dots and underscores replaced
// by hyphens: -admin-listen, -log-level.
//
// # Values
//
// Durations are Go duration strings ("300ms", "10s", "1h30m") in YAML, in
// the environment and on the command line. Booleans accept true/false
// (and 1/0 in the environment). Lists are YAML sequences in the file and
// comma-separated in the environment. A YAML key with no value keeps its
// default. Unknown YAML keys and unknown UNIGATE_* variables are errors, so
// a typo never silently falls back to a default; UNIGATE_CONFIG is reserved
// for the caller (the path of the file).
//
// # Contract
//
// Config is a plain value: copy it freely. It holds no secrets (the HMAC
// key lives in its own file, see Config.KeyPath) except inline API keys
// (api.keys[].key; key_file is preferred), which APIKey.String redacts, so
// it may be logged in full with %v.
// Load never calls Validate: callers validate the final value, after flags.
// Fields where zero means "automatic" (EventLoops, Broker.Shards,
// MaxConnections, Auth.KeyFile) say so and have a method that resolves them.
// Nothing in this package keeps global state; all functions are safe for
// concurrent use, methods on *Config are not.
package config
