package main

import (
	"errors"
	"io"
	"runtime/debug"

	"github.com/unigate/unigate/deploy/bundle"
)

// sbomCmd prints the CycloneDX SBOM of this binary, built from its own
// build information: the same document as sbom/unigate.cdx.json in the
// bundle (without the timestamp).
func sbomCmd(stdout io.Writer) error {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return errors.New("this binary carries no build information")
	}
	out, err := bundle.EncodeSBOM(bundle.SBOM(bi, bundle.SBOMOptions{Name: "unigate", Version: version}))
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}
