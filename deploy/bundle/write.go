package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"
)

// File is one file to put in a bundle.
type File struct {
	Path string // relative to the top directory, slash-separated
	Mode int64  // permission bits: 0o755 for programs, 0o644 otherwise
	Data []byte
}

// Write writes a reproducible gzip-compressed tar bundle to w: every file
// under the top directory top, plus SHA256SUMS and SM3SUMS listing them.
// Every entry gets mtime as its modification time, owner root (0:0), and
// the directories mode 0755.
func Write(w io.Writer, top string, files []File, mtime time.Time) error {
	if err := checkPath(top); err != nil || strings.Contains(top, "/") {
		return fmt.Errorf("bundle: bad top directory %q", top)
	}
	sums := map[string]Digests{}
	all := make([]File, 0, len(files)+len(Algorithms))
	for _, f := range files {
		if err := checkPath(f.Path); err != nil {
			return fmt.Errorf("bundle: %w", err)
		}
		if f.Path == SHA256File || f.Path == SM3File {
			return fmt.Errorf("bundle: %s is written by Write", f.Path)
		}
		if _, dup := sums[f.Path]; dup {
			return fmt.Errorf("bundle: %s given twice", f.Path)
		}
		d, err := Sum(bytes.NewReader(f.Data))
		if err != nil {
			return err
		}
		sums[f.Path] = d
		all = append(all, f)
	}
	for _, alg := range Algorithms {
		all = append(all, File{Path: alg.File, Mode: 0o644, Data: FormatSums(alg, sums)})
	}
	slices.SortFunc(all, func(a, b File) int { return strings.Compare(a.Path, b.Path) })

	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	mtime = mtime.UTC().Truncate(time.Second)
	header := func(name string, mode int64, typ byte, size int64) *tar.Header {
		return &tar.Header{Typeflag: typ, Name: name, Mode: mode, Size: size, ModTime: mtime,
			Uid: 0, Gid: 0, Uname: "root", Gname: "root", Format: tar.FormatUSTAR}
	}
	dirs := map[string]bool{}
	var mkdir func(d string) error
	mkdir = func(d string) error {
		if d == "." || dirs[d] {
			return nil
		}
		if err := mkdir(path.Dir(d)); err != nil {
			return err
		}
		dirs[d] = true
		return tw.WriteHeader(header(d+"/", 0o755, tar.TypeDir, 0))
	}
	for _, f := range all {
		name := top + "/" + f.Path
		if err := mkdir(path.Dir(name)); err != nil {
			return err
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := tw.WriteHeader(header(name, mode, tar.TypeReg, int64(len(f.Data)))); err != nil {
			return fmt.Errorf("bundle: %s: %w", name, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}
