package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/unigate/unigate/internal/config"
	"github.com/unigate/unigate/internal/token"
)

// tokenCmd prints a signed agent or visitor token, creating the HMAC key on
// first use exactly as serve does.
func tokenCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "agent" && args[0] != "visitor") {
		fmt.Fprintln(stderr, "usage: unigate token agent|visitor -id ID [-skills a,b] [-tenant T] [-name N] [-ttl D]")
		return errUsage
	}
	role := args[0]
	var id, skills, tenant, name *string
	var ttl *time.Duration
	cfg, _, err := loadConfig("token "+role, args[1:], stderr, func(fs *flag.FlagSet) {
		id = fs.String("id", "", "agent or visitor `id` (required)")
		skills = fs.String("skills", "", "comma-separated `skills` (agents)")
		tenant = fs.String("tenant", "default", "`tenant`")
		name = fs.String("name", "", "display `name`")
		ttl = fs.Duration("ttl", 0, "token lifetime (default: auth.agent_token_ttl or auth.visitor_token_ttl)")
	})
	if err != nil {
		return err
	}
	if *id == "" {
		fmt.Fprintln(stderr, "unigate token: -id is required")
		return errUsage
	}
	life := *ttl
	if life == 0 {
		life = cfg.Auth.AgentTokenTTL
		if role == "visitor" {
			life = cfg.Auth.VisitorTokenTTL
		}
	}
	key, _, err := token.LoadOrCreateKey(cfg.KeyPath())
	if err != nil {
		return err
	}
	s, err := token.NewSigner(key)
	if err != nil {
		return err
	}
	now := time.Now()
	c := token.Claims{Subject: *id, Role: role, Tenant: *tenant, Name: *name, IssuedAt: now, ExpiresAt: now.Add(life)}
	if *skills != "" {
		for sk := range strings.SplitSeq(*skills, ",") {
			if sk = strings.TrimSpace(sk); sk != "" {
				c.Skills = append(c.Skills, sk)
			}
		}
	}
	tok, err := s.Sign(c)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

func configCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: unigate config check [-config FILE] | unigate config example")
		return errUsage
	}
	switch args[0] {
	case "example":
		fmt.Fprint(stdout, config.Example())
		return nil
	case "check":
		_, _, err := loadConfig("config check", args[1:], stderr, nil)
		if err != nil {
			if errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp) {
				return err
			}
			return fmt.Errorf("configuration is not valid:\n%w", err)
		}
		fmt.Fprintln(stdout, "configuration ok")
		return nil
	}
	fmt.Fprintf(stderr, "unigate config: unknown subcommand %q\n", args[0])
	return errUsage
}

func printVersion(w io.Writer) {
	fmt.Fprintf(w, "unigate %s\n", version)
	if commit != "" {
		fmt.Fprintf(w, "commit  %s\n", commit)
	}
	if date != "" {
		fmt.Fprintf(w, "built   %s\n", date)
	}
	fmt.Fprintf(w, "go      %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if bi, ok := debug.ReadBuildInfo(); ok {
		var build []string
		for _, s := range bi.Settings {
			switch s.Key {
			case "CGO_ENABLED", "-trimpath", "-tags", "GOAMD64", "GOARM64":
				build = append(build, s.Key+"="+s.Value)
			}
		}
		if len(build) > 0 {
			fmt.Fprintf(w, "build   %s\n", strings.Join(build, " "))
		}
		for _, d := range bi.Deps {
			v := d.Version
			if d.Replace != nil {
				v += " => " + d.Replace.Path + " " + d.Replace.Version
			}
			fmt.Fprintf(w, "dep     %s %s\n", d.Path, v)
		}
	}
}
