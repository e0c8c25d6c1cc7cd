// Command unigate runs the Unigate gateway and its tools.
//
//	unigate [serve] [-config unigate.yaml] [flags]   run the gateway (default)
//	unigate token agent -id a1 -skills billing       print a signed agent token
//	unigate token visitor -id v1                      print a signed visitor token
//	unigate config check [-config unigate.yaml]      validate the configuration
//	unigate config example                            print a commented example configuration
//	unigate keygen -alg sm2 -out id.key               secure-channel identity key; prints the pin
//	unigate keys status|rotate|rotate-master|rewrap  encryption-at-rest keys (through the admin listener)
//	unigate bot eval FILE [-kb KB] [-threshold 0.8]  evaluate the FAQ bot on a labelled set
//	unigate version                                   print version and build information
//	unigate verify bundle.tar.gz                      check a bundle's SHA256SUMS and SM3SUMS
//	unigate sbom                                      print this binary's CycloneDX SBOM
//
// main only parses the command line and configuration and wires packages;
// all logic lives in them.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// Stamped at build time with -ldflags "-X main.version=... -X main.commit=... -X main.date=...".
var (
	version = "dev"
	commit  = ""
	date    = ""
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks an error whose message was already printed with the usage.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(args, stderr)
	case "token":
		err = tokenCmd(args, stdout, stderr)
	case "config":
		err = configCmd(args, stdout, stderr)
	case "keygen":
		err = keygenCmd(args, stdout, stderr)
	case "keys":
		err = keysCmd(args, stdout, stderr)
	case "bot":
		err = botCmd(args, stdout, stderr)
	case "version":
		printVersion(stdout)
	case "verify":
		err = verifyCmd(args, stdout, stderr)
	case "sbom":
		err = sbomCmd(stdout)
	case "help", "-h", "--help":
		usage(stdout)
	default:
		fmt.Fprintf(stderr, "unigate: unknown command %q\n\n", cmd)
		usage(stderr)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "unigate %s: %v\n", cmd, err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage:
  unigate [serve] [-config FILE] [flags]    run the gateway (default command)
  unigate token agent -id ID [-skills a,b]  print a signed agent token
  unigate token visitor -id ID              print a signed visitor token
  unigate config check [-config FILE]       validate the configuration
  unigate config example                    print a commented example configuration
  unigate keygen [-alg sm2|ed25519] [-cert F] secure-channel identity key (and certificate)
  unigate keys status|rotate|rotate-master|rewrap  encryption-at-rest keys of the running gateway
  unigate bot eval FILE [-kb KB]            evaluate the built-in FAQ bot on a labelled set
  unigate version                           print version and build information
  unigate verify BUNDLE.tar.gz              check a bundle against its SHA256SUMS and SM3SUMS
  unigate sbom                              print this binary's SBOM (CycloneDX JSON)

Configuration: defaults < YAML file (-config or UNIGATE_CONFIG) < UNIGATE_* environment < flags.
See docs/configuration.md.
`)
}
