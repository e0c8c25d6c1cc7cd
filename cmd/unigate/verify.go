package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/unigate/unigate/deploy/bundle"
)

// errVerify: a bundle did not match its checksum files (already reported).
var errVerify = errors.New("verification failed")

// verifyCmd checks offline bundles (tar.gz, or an unpacked top directory)
// against both their SHA256SUMS and SM3SUMS, and lists every difference.
func verifyCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("unigate verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: unigate verify BUNDLE.tar.gz|DIR ...")
		fmt.Fprintln(stderr, "Checks every file of a bundle against its SHA256SUMS and SM3SUMS; exit status 1 if anything differs.")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errUsage
	}
	failed := 0
	for _, p := range fs.Args() {
		rep, err := bundle.VerifyFile(p)
		switch {
		case err != nil:
			fmt.Fprintf(stdout, "%s: FAILED: %v\n", p, err)
			failed++
		case rep.OK():
			fmt.Fprintf(stdout, "%s: OK: %d files match SHA256SUMS (SHA-256) and SM3SUMS (SM3)\n", p, rep.Checked)
		default:
			fmt.Fprintf(stdout, "%s: FAILED: %d problem(s); %d of %d files match both lists\n", p, len(rep.Problems), rep.Checked, rep.Files)
			for _, pr := range rep.Problems {
				fmt.Fprintf(stdout, "  %s\n", pr)
			}
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%w: %d of %d bundle(s)", errVerify, failed, fs.NArg())
	}
	return nil
}
