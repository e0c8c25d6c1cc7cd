// Command mkbundle writes Unigate's offline bundles (make bundle): one
// reproducible tarball per architecture from the binaries that make dist
// left in dist/linux-<arch>/, and dist/SHA256SUMS and dist/SM3SUMS for the
// tarballs. Run it from the repository root.
//
//	go run ./deploy/mkbundle -version v1.2.0 -commit abc... -epoch 1700000000 -arch amd64,arm64,loong64
package main

import (
	"bytes"
	"debug/buildinfo"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/unigate/unigate/deploy/bundle"
	"github.com/unigate/unigate/internal/config"
)

func main() {
	dist := flag.String("dist", "dist", "`directory` holding linux-<arch>/ binaries; bundles are written there")
	arches := flag.String("arch", "amd64,arm64,loong64", "comma-separated `architectures`")
	version := flag.String("version", "dev", "version stamped in the binaries")
	commit := flag.String("commit", "", "commit stamped in the binaries")
	epoch := flag.Int64("epoch", 0, "modification time of every entry, Unix `seconds` (the commit time)")
	flag.Parse()
	if *epoch <= 0 {
		fatal(errors.New("-epoch is required (make bundle passes the commit time)"))
	}
	mtime := time.Unix(*epoch, 0).UTC()
	common, err := commonFiles(*version, *commit, mtime)
	if err != nil {
		fatal(err)
	}
	var written []string
	for _, arch := range strings.Split(*arches, ",") {
		name := bundle.Name(*version, arch)
		files, err := archFiles(*dist, arch, *version, mtime)
		if err != nil {
			fatal(err)
		}
		files = append(files, common...)
		files = append(files, bundle.File{Path: "VERSION", Mode: 0o644, Data: fmt.Appendf(nil,
			"version %s\ncommit  %s\nbuilt   %s\nplatform linux/%s\n", *version, *commit, mtime.Format(time.RFC3339), arch)})
		var b bytes.Buffer
		if err := bundle.Write(&b, name, files, mtime); err != nil {
			fatal(err)
		}
		out := filepath.Join(*dist, name+".tar.gz")
		if err := os.WriteFile(out, b.Bytes(), 0o644); err != nil {
			fatal(err)
		}
		fmt.Printf("%s: %d files, %d bytes\n", out, len(files)+2, b.Len())
		written = append(written, out)
	}
	if err := distSums(*dist, written); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "mkbundle:", err)
	os.Exit(1)
}

// archFiles are the binaries of one architecture and their SBOMs.
func archFiles(dist, arch, version string, mtime time.Time) ([]bundle.File, error) {
	var files []bundle.File
	for _, bin := range []string{"unigate", "unigate-bench"} {
		p := filepath.Join(dist, "linux-"+arch, bin)
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("%w (run make dist first)", err)
		}
		bi, err := buildinfo.Read(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if goarch := setting(bi.Settings, "GOARCH"); goarch != arch {
			return nil, fmt.Errorf("%s is built for GOARCH=%q, want %q", p, goarch, arch)
		}
		if cgo := setting(bi.Settings, "CGO_ENABLED"); cgo != "0" {
			return nil, fmt.Errorf("%s is built with CGO_ENABLED=%q; bundles hold static binaries only", p, cgo)
		}
		sbom, err := bundle.EncodeSBOM(bundle.SBOM(bi, bundle.SBOMOptions{Name: bin, Version: version, Timestamp: mtime}))
		if err != nil {
			return nil, err
		}
		files = append(files,
			bundle.File{Path: "bin/" + bin, Mode: 0o755, Data: data},
			bundle.File{Path: "sbom/" + bin + ".cdx.json", Mode: 0o644, Data: sbom})
	}
	return files, nil
}

func setting(s []debug.BuildSetting, key string) string {
	for _, kv := range s {
		if kv.Key == key {
			return kv.Value
		}
	}
	return ""
}

// commonFiles are the files every architecture's bundle holds.
func commonFiles(version, commit string, mtime time.Time) ([]bundle.File, error) {
	var files []bundle.File
	add := func(src, dst string) error {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		files = append(files, bundle.File{Path: dst, Mode: 0o644, Data: data})
		return nil
	}
	for _, f := range []string{"README.md", "LICENSE"} {
		if err := add(f, f); err != nil {
			return nil, err
		}
	}
	docs, err := filepath.Glob("docs/*")
	if err != nil {
		return nil, err
	}
	slices.Sort(docs)
	for _, d := range docs {
		if err := add(d, filepath.ToSlash(d)); err != nil {
			return nil, err
		}
	}
	// The deployment files: everything under deploy/ but the Go code of
	// the tools and tests.
	err = filepath.WalkDir("deploy", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			if e.Name() == "testdata" || e.Name() == "bundle" || e.Name() == "mkbundle" {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(p, ".go") {
			return nil
		}
		mode := int64(0o644)
		if strings.HasSuffix(p, ".sh") {
			mode = 0o755
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, bundle.File{Path: filepath.ToSlash(p), Mode: mode, Data: data})
		return nil
	})
	if err != nil {
		return nil, err
	}
	cfg, err := bundle.Config(config.Example())
	if err != nil {
		return nil, err
	}
	files = append(files, bundle.File{Path: "etc/unigate.yaml", Mode: 0o644, Data: cfg})
	return files, nil
}

// distSums writes dist/SHA256SUMS and dist/SM3SUMS for the bundles just
// written (older ones left in dist are not listed).
func distSums(dist string, tars []string) error {
	sums := map[string]bundle.Digests{}
	for _, t := range tars {
		f, err := os.Open(t)
		if err != nil {
			return err
		}
		d, err := bundle.Sum(f)
		f.Close()
		if err != nil {
			return err
		}
		sums[filepath.Base(t)] = d
	}
	for _, alg := range bundle.Algorithms {
		if err := os.WriteFile(filepath.Join(dist, alg.File), bundle.FormatSums(alg, sums), 0o644); err != nil {
			return err
		}
	}
	return nil
}
