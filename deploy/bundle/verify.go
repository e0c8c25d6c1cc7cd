package bundle

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Kind classifies a Problem.
type Kind string

// What Verify can find wrong with a bundle.
const (
	// Modified: the file's digest differs from its line in a checksum file.
	Modified Kind = "MODIFIED"
	// Missing: a checksum file lists a file the bundle does not have, or
	// a checksum file itself is absent.
	Missing Kind = "MISSING"
	// Unlisted: the bundle has a file that a checksum file does not list.
	Unlisted Kind = "UNLISTED"
	// Malformed: a line of a checksum file cannot be read.
	Malformed Kind = "MALFORMED"
	// Unsafe: an archive entry that a bundle never holds (a link, a
	// device, an absolute path or "..", a second top directory).
	Unsafe Kind = "UNSAFE"
)

// Problem is one difference between a bundle and its checksum files.
type Problem struct {
	Kind   Kind
	Path   string // the file concerned, relative to the top directory
	File   string // the checksum file concerned, if any
	Line   int    // its line, if any
	Detail string
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(string(p.Kind))
	if p.Path != "" {
		b.WriteString(" " + p.Path)
	}
	if p.File != "" {
		b.WriteString(" (" + p.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, " line %d", p.Line)
		}
		b.WriteString(")")
	}
	if p.Detail != "" {
		b.WriteString(": " + p.Detail)
	}
	return b.String()
}

// Report is the outcome of a verification.
type Report struct {
	Top      string    // the bundle's top directory ("" for VerifyDir)
	Files    int       // regular files in the bundle, checksum files included
	Checked  int       // files whose digests matched both lists
	Problems []Problem // sorted by path, then kind
}

// OK reports whether the bundle matched both checksum files exactly.
func (r Report) OK() bool { return len(r.Problems) == 0 && r.Checked > 0 }

// ErrNotBundle is returned for input that is not a readable bundle at all
// (not gzip, not tar, no files); a readable bundle with wrong contents is
// not an error but a Report with Problems.
var ErrNotBundle = errors.New("not a bundle")

// Verify reads a gzip-compressed tar bundle from r and checks every file
// against SHA256SUMS and SM3SUMS at its top directory. Nothing is written
// to disk.
func Verify(r io.Reader) (Report, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return Report{}, fmt.Errorf("%w: %v", ErrNotBundle, err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	var rep Report
	files := map[string]Digests{}
	sums := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Report{}, fmt.Errorf("%w: %v", ErrNotBundle, err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		if err := checkPath(name); err != nil {
			rep.Problems = append(rep.Problems, Problem{Kind: Unsafe, Path: h.Name, Detail: err.Error()})
			continue
		}
		top, rel, _ := strings.Cut(name, "/")
		if rep.Top == "" {
			rep.Top = top
		} else if top != rep.Top {
			rep.Problems = append(rep.Problems, Problem{Kind: Unsafe, Path: name,
				Detail: fmt.Sprintf("outside the top directory %s/", rep.Top)})
			continue
		}
		switch h.Typeflag {
		case tar.TypeDir:
			continue
		case tar.TypeReg:
		default:
			rep.Problems = append(rep.Problems, Problem{Kind: Unsafe, Path: rel,
				Detail: fmt.Sprintf("tar entry of type %q; a bundle holds only files and directories", h.Typeflag)})
			continue
		}
		if rel == "" {
			rep.Problems = append(rep.Problems, Problem{Kind: Unsafe, Path: name, Detail: "a file at the top level; a bundle has one top directory"})
			continue
		}
		if _, dup := files[rel]; dup {
			rep.Problems = append(rep.Problems, Problem{Kind: Unsafe, Path: rel, Detail: "the archive holds this file twice"})
			continue
		}
		if rel == SHA256File || rel == SM3File {
			b, err := io.ReadAll(io.LimitReader(tr, 16<<20))
			if err != nil {
				return Report{}, fmt.Errorf("%w: %v", ErrNotBundle, err)
			}
			sums[rel] = b
			files[rel] = nil
			continue
		}
		d, err := Sum(tr)
		if err != nil {
			return Report{}, fmt.Errorf("%w: %s: %v", ErrNotBundle, name, err)
		}
		files[rel] = d
	}
	if len(files) == 0 {
		return rep, fmt.Errorf("%w: the archive holds no file", ErrNotBundle)
	}
	return compare(rep, files, sums), nil
}

// VerifyFile is Verify on the file at path. A directory is checked with
// VerifyDir.
func VerifyFile(p string) (Report, error) {
	st, err := os.Stat(p)
	if err != nil {
		return Report{}, err
	}
	if st.IsDir() {
		return VerifyDir(p)
	}
	f, err := os.Open(p)
	if err != nil {
		return Report{}, err
	}
	defer f.Close()
	return Verify(f)
}

// VerifyDir checks an unpacked bundle: dir is its top directory.
// Symbolic links and other special files are reported as Unsafe.
func VerifyDir(dir string) (Report, error) {
	var rep Report
	files := map[string]Digests{}
	sums := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case e.IsDir():
			return nil
		case !e.Type().IsRegular():
			rep.Problems = append(rep.Problems, Problem{Kind: Unsafe, Path: rel, Detail: "not a regular file (" + e.Type().String() + ")"})
			return nil
		}
		if rel == SHA256File || rel == SM3File {
			b, err := os.ReadFile(p)
			sums[rel], files[rel] = b, nil
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		files[rel], err = Sum(f)
		return err
	})
	if err != nil {
		return Report{}, err
	}
	if len(files) == 0 {
		return rep, fmt.Errorf("%w: %s holds no file", ErrNotBundle, dir)
	}
	return compare(rep, files, sums), nil
}

// compare checks files (path -> digests; nil for the checksum files)
// against the checksum files' contents.
func compare(rep Report, files map[string]Digests, sums map[string][]byte) Report {
	rep.Files = len(files)
	matched := map[string]int{}
	for _, alg := range Algorithms {
		data, ok := sums[alg.File]
		if !ok {
			rep.Problems = append(rep.Problems, Problem{Kind: Missing, Path: alg.File, Detail: "the bundle has no " + alg.Name + " checksum file"})
			continue
		}
		lines, problems := parseSums(alg, data)
		rep.Problems = append(rep.Problems, problems...)
		listed := map[string]bool{}
		for _, l := range lines {
			listed[l.path] = true
			d, ok := files[l.path]
			switch {
			case !ok:
				rep.Problems = append(rep.Problems, Problem{Kind: Missing, Path: l.path, File: alg.File, Line: l.line,
					Detail: "listed but not in the bundle"})
			case d == nil:
				rep.Problems = append(rep.Problems, Problem{Kind: Malformed, Path: l.path, File: alg.File, Line: l.line,
					Detail: "a checksum file cannot list a checksum file"})
			case d[alg.Name] != l.digest:
				rep.Problems = append(rep.Problems, Problem{Kind: Modified, Path: l.path, File: alg.File, Line: l.line,
					Detail: fmt.Sprintf("%s is %s, the list says %s", alg.Name, d[alg.Name], l.digest)})
			default:
				matched[l.path]++
			}
		}
		for p, d := range files {
			if d != nil && !listed[p] {
				rep.Problems = append(rep.Problems, Problem{Kind: Unlisted, Path: p, File: alg.File,
					Detail: "in the bundle but not in " + alg.File})
			}
		}
	}
	for _, n := range matched {
		if n == len(Algorithms) {
			rep.Checked++
		}
	}
	slices.SortStableFunc(rep.Problems, func(a, b Problem) int {
		if c := strings.Compare(a.Path, b.Path); c != 0 {
			return c
		}
		if c := strings.Compare(string(a.Kind), string(b.Kind)); c != 0 {
			return c
		}
		return strings.Compare(a.File, b.File)
	})
	return rep
}

// Name is the top directory (and, with ".tar.gz", the file name) of the
// bundle of version for linux/arch.
func Name(version, arch string) string {
	return "unigate-" + version + "-linux-" + arch
}
