package bundle

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"strings"

	"github.com/emmansun/gmsm/sm3"
)

// Names of the checksum files at the top of a bundle.
const (
	SHA256File = "SHA256SUMS"
	SM3File    = "SM3SUMS"
)

// Algorithm is a digest used by a checksum file.
type Algorithm struct {
	Name string // "SHA-256" or "SM3"
	File string // SHA256File or SM3File
	New  func() hash.Hash
}

// Algorithms are the digests every bundle lists, in report order.
var Algorithms = []Algorithm{
	{Name: "SHA-256", File: SHA256File, New: sha256.New},
	{Name: "SM3", File: SM3File, New: sm3.New},
}

// Digests holds the hex digests of one file, keyed by Algorithm.Name.
type Digests map[string]string

// Sum reads r to the end and returns its digests under every Algorithm.
func Sum(r io.Reader) (Digests, error) {
	hs := make([]hash.Hash, len(Algorithms))
	ws := make([]io.Writer, len(Algorithms))
	for i, a := range Algorithms {
		hs[i] = a.New()
		ws[i] = hs[i]
	}
	if _, err := io.Copy(io.MultiWriter(ws...), r); err != nil {
		return nil, err
	}
	d := make(Digests, len(Algorithms))
	for i, a := range Algorithms {
		d[a.Name] = hex.EncodeToString(hs[i].Sum(nil))
	}
	return d, nil
}

// FormatSums writes the checksum file of alg for files (path -> digests):
// one "<hex>  <path>" line per file, sorted by path.
func FormatSums(alg Algorithm, files map[string]Digests) []byte {
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	var b bytes.Buffer
	for _, p := range paths {
		fmt.Fprintf(&b, "%s  %s\n", files[p][alg.Name], p)
	}
	return b.Bytes()
}

// errMalformed marks a checksum line that cannot be read.
var errMalformed = errors.New("malformed line")

// sumLine is one line of a checksum file.
type sumLine struct {
	line   int
	digest string
	path   string
}

// parseSums reads a checksum file of alg. It accepts the text ("  ") and
// binary (" *") separators of coreutils; every other deviation is
// reported with its line number and the rest of the file is still read.
func parseSums(alg Algorithm, data []byte) (lines []sumLine, problems []Problem) {
	size := alg.New().Size() * 2
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	seen := map[string]int{}
	for n := 1; sc.Scan(); n++ {
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		bad := func(why string) {
			problems = append(problems, Problem{Kind: Malformed, File: alg.File, Line: n,
				Detail: fmt.Sprintf("%v: %s: %q", errMalformed, why, clip(text))})
		}
		if len(text) < size+3 || (text[size:size+2] != "  " && text[size:size+2] != " *") {
			bad(fmt.Sprintf("want %d hex digits, two spaces and a path", size))
			continue
		}
		digest, path := text[:size], text[size+2:]
		if _, err := hex.DecodeString(digest); err != nil || strings.ToLower(digest) != digest {
			bad("digest is not lower-case hex")
			continue
		}
		if err := checkPath(path); err != nil {
			bad(err.Error())
			continue
		}
		if first, dup := seen[path]; dup {
			bad(fmt.Sprintf("%s is listed again (first on line %d)", path, first))
			continue
		}
		seen[path] = n
		lines = append(lines, sumLine{line: n, digest: digest, path: path})
	}
	if err := sc.Err(); err != nil {
		problems = append(problems, Problem{Kind: Malformed, File: alg.File, Detail: err.Error()})
	}
	return lines, problems
}

// checkPath accepts the relative, clean, slash-separated paths a bundle
// may hold.
func checkPath(p string) error {
	switch {
	case p == "" || p == ".":
		return errors.New("empty path")
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("absolute path %q", p)
	case strings.ContainsAny(p, "\\\x00\r"):
		return fmt.Errorf("path %q has a backslash or a control character", p)
	}
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("path %q is not clean", p)
		}
	}
	return nil
}

func clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}
