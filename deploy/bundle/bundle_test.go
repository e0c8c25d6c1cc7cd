package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

var testFiles = []File{
	{Path: "bin/unigate", Mode: 0o755, Data: []byte("\x7fELF not really")},
	{Path: "etc/unigate.yaml", Data: []byte("listen: \":8080\"\n")},
	{Path: "docs/deploy.md", Data: []byte("# Deploy\n")},
	{Path: "README.md", Data: []byte("# Unigate\n")},
}

var epoch = time.Unix(1700000000, 0)

func goodBundle(t testing.TB) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Write(&b, "unigate-v1-linux-arm64", testFiles, epoch); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// entry is one tar entry, for rewriting bundles in tests.
type entry struct {
	hdr  tar.Header
	data []byte
}

func unpack(t testing.TB, tgz []byte) []entry {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var out []entry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{*h, data})
	}
}

func pack(t testing.TB, entries []entry) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := e.hdr
		h.Size = int64(len(e.data))
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// edit rewrites the bundle: f gets each entry's path below the top
// directory and returns the new content, or nil to drop the entry.
func edit(t testing.TB, tgz []byte, f func(rel string, data []byte) []byte) []byte {
	t.Helper()
	var out []entry
	for _, e := range unpack(t, tgz) {
		_, rel, _ := strings.Cut(strings.TrimSuffix(e.hdr.Name, "/"), "/")
		if e.hdr.Typeflag == tar.TypeReg {
			if e.data = f(rel, e.data); e.data == nil {
				continue
			}
		}
		out = append(out, e)
	}
	return pack(t, out)
}

func TestVerifyGood(t *testing.T) {
	rep, err := Verify(bytes.NewReader(goodBundle(t)))
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() || rep.Checked != len(testFiles) || rep.Files != len(testFiles)+2 || rep.Top != "unigate-v1-linux-arm64" {
		t.Fatalf("report %+v", rep)
	}
	// The lists are what sha256sum -c reads.
	for _, e := range unpack(t, goodBundle(t)) {
		if strings.HasSuffix(e.hdr.Name, "/"+SHA256File) {
			if !strings.Contains(string(e.data), "  bin/unigate\n") {
				t.Fatalf("SHA256SUMS:\n%s", e.data)
			}
		}
	}
}

// TestVerifyUnpacked: the same check on a directory, as `tar xf` leaves it.
func TestVerifyUnpacked(t *testing.T) {
	dir := t.TempDir()
	for _, e := range unpack(t, goodBundle(t)) {
		p := filepath.Join(dir, filepath.FromSlash(e.hdr.Name))
		if e.hdr.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, e.data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	top := filepath.Join(dir, "unigate-v1-linux-arm64")
	rep, err := VerifyFile(top)
	if err != nil || !rep.OK() {
		t.Fatalf("unpacked: %+v %v", rep, err)
	}
	if err := os.WriteFile(filepath.Join(top, "docs", "deploy.md"), []byte("# Deploy, edited\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err = VerifyDir(top)
	if err != nil || rep.OK() || len(rep.Problems) != 2 || rep.Problems[0].Kind != Modified {
		t.Fatalf("edited unpacked bundle: %+v %v", rep, err)
	}
}

func TestVerifyFindsTampering(t *testing.T) {
	good := goodBundle(t)
	for _, tc := range []struct {
		name  string
		f     func(rel string, data []byte) []byte
		kinds map[string]Kind // path -> the kind each list reports
		count int
	}{
		{
			name: "modified file",
			f: func(rel string, d []byte) []byte {
				if rel == "bin/unigate" {
					return append(bytes.Clone(d), '!')
				}
				return d
			},
			kinds: map[string]Kind{"bin/unigate": Modified}, count: 2,
		},
		{
			name: "missing file",
			f: func(rel string, d []byte) []byte {
				if rel == "etc/unigate.yaml" {
					return nil
				}
				return d
			},
			kinds: map[string]Kind{"etc/unigate.yaml": Missing}, count: 2,
		},
		{
			name: "wrong checksum line",
			f: func(rel string, d []byte) []byte {
				if rel != SM3File {
					return d
				}
				// The SM3 of README.md replaced by the SHA-256 line's digest
				// shape but other content.
				lines := strings.Split(string(d), "\n")
				for i, l := range lines {
					if strings.HasSuffix(l, "  README.md") {
						lines[i] = strings.Repeat("0", 64) + "  README.md"
					}
				}
				return []byte(strings.Join(lines, "\n"))
			},
			kinds: map[string]Kind{"README.md": Modified}, count: 1,
		},
		{
			name: "malformed line",
			f: func(rel string, d []byte) []byte {
				if rel != SHA256File {
					return d
				}
				return append(bytes.Clone(d), "not a checksum line\n"...)
			},
			kinds: map[string]Kind{"": Malformed}, count: 1,
		},
		{
			name: "checksum file missing",
			f: func(rel string, d []byte) []byte {
				if rel == SM3File {
					return nil
				}
				return d
			},
			kinds: map[string]Kind{SM3File: Missing}, count: 1,
		},
		{
			name: "unlisted file",
			f: func(rel string, d []byte) []byte {
				if rel != SHA256File {
					return d
				}
				var keep []string
				for l := range strings.Lines(string(d)) {
					if !strings.HasSuffix(l, "  docs/deploy.md\n") {
						keep = append(keep, l)
					}
				}
				return []byte(strings.Join(keep, ""))
			},
			kinds: map[string]Kind{"docs/deploy.md": Unlisted}, count: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := Verify(bytes.NewReader(edit(t, good, tc.f)))
			if err != nil {
				t.Fatal(err)
			}
			if tc.count == 0 {
				if !rep.OK() {
					t.Fatalf("unchanged bundle reported %v", rep.Problems)
				}
				return
			}
			if rep.OK() || len(rep.Problems) != tc.count {
				t.Fatalf("want %d problem(s) %v, got %+v", tc.count, tc.kinds, rep.Problems)
			}
			for _, p := range rep.Problems {
				if want, ok := tc.kinds[p.Path]; !ok || p.Kind != want {
					t.Fatalf("unexpected problem %s (want %v)", p, tc.kinds)
				}
				if p.String() == "" || !strings.Contains(p.String(), string(p.Kind)) {
					t.Fatalf("problem text %q", p)
				}
			}
		})
	}
}

func TestVerifyFindsAddedFile(t *testing.T) {
	extra := entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "unigate-v1-linux-arm64/bin/backdoor", Mode: 0o755}, data: []byte("x")}
	rep, err := Verify(bytes.NewReader(pack(t, append(unpack(t, goodBundle(t)), extra))))
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || len(rep.Problems) != 2 || rep.Problems[0].Kind != Unlisted || rep.Problems[0].Path != "bin/backdoor" {
		t.Fatalf("%+v", rep.Problems)
	}
}

func TestVerifyRefusesUnsafeEntries(t *testing.T) {
	good := unpack(t, goodBundle(t))
	link := entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "unigate-v1-linux-arm64/bin/sh", Linkname: "/bin/sh", Mode: 0o777}}
	escape := entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "unigate-v1-linux-arm64/../evil", Mode: 0o644}, data: []byte("x")}
	other := entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "elsewhere/file", Mode: 0o644}, data: []byte("x")}
	rep, err := Verify(bytes.NewReader(pack(t, append(append([]entry{}, good...), link, escape, other))))
	if err != nil {
		t.Fatal(err)
	}
	unsafe := 0
	for _, p := range rep.Problems {
		if p.Kind == Unsafe {
			unsafe++
		}
	}
	if rep.OK() || unsafe != 3 || rep.Checked != len(testFiles) {
		t.Fatalf("%+v", rep)
	}
}

func TestVerifyNotABundle(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":     nil,
		"not gzip":  []byte("hello"),
		"truncated": goodBundle(t)[:200],
		"no files":  pack(t, nil),
	} {
		if _, err := Verify(bytes.NewReader(data)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestWriteReproducible: the same input gives the same bytes, whatever the
// order of the files and the time zone of the epoch.
func TestWriteReproducible(t *testing.T) {
	a := goodBundle(t)
	rev := make([]File, len(testFiles))
	for i, f := range testFiles {
		rev[len(testFiles)-1-i] = f
	}
	var b bytes.Buffer
	if err := Write(&b, "unigate-v1-linux-arm64", rev, epoch.In(time.FixedZone("CST", 8*3600))); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b.Bytes()) {
		t.Fatal("two writes of the same files differ")
	}
	for _, e := range unpack(t, a) {
		if !e.hdr.ModTime.Equal(epoch) || e.hdr.Uid != 0 || e.hdr.Gid != 0 {
			t.Fatalf("%s: mtime %v uid %d gid %d", e.hdr.Name, e.hdr.ModTime, e.hdr.Uid, e.hdr.Gid)
		}
		if e.hdr.Name == "unigate-v1-linux-arm64/bin/unigate" && e.hdr.Mode != 0o755 {
			t.Fatalf("binary mode %o", e.hdr.Mode)
		}
	}
	if err := Write(io.Discard, "top", []File{{Path: "../x"}}, epoch); err == nil {
		t.Fatal("a path with .. was written")
	}
	if err := Write(io.Discard, "top", []File{{Path: SHA256File}}, epoch); err == nil {
		t.Fatal("a caller's SHA256SUMS was written")
	}
}

// TestSums checks both digests against known answers: SHA-256 (FIPS 180-4)
// and SM3 (GB/T 32905-2016 appendix A, "abc").
func TestSums(t *testing.T) {
	d, err := Sum(strings.NewReader("abc"))
	if err != nil {
		t.Fatal(err)
	}
	if d["SHA-256"] != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("SHA-256 %s", d["SHA-256"])
	}
	if d["SM3"] != "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0" {
		t.Fatalf("SM3 %s", d["SM3"])
	}
}

func TestSBOM(t *testing.T) {
	// What `go version -m` prints of a release binary.
	bi, err := debug.ParseBuildInfo(strings.Join([]string{
		"go\tgo1.26.8",
		"path\tgithub.com/unigate/unigate/cmd/unigate",
		"mod\tgithub.com/unigate/unigate\t(devel)\t",
		"dep\tgithub.com/emmansun/gmsm\tv0.44.1\th1:ndOxtOlIpVp3F/hHBPhuJ5DUs2v/2ECpaT8GlHDHlOs=",
		"dep\tgithub.com/gobwas/ws\tv1.5.0\th1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
		"=>\t../ws\t(devel)\t",
		"build\t-trimpath=true",
		"build\tCGO_ENABLED=0",
		"build\tGOARCH=loong64",
		"build\tGOOS=linux",
	}, "\n"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := EncodeSBOM(SBOM(bi, SBOMOptions{Name: "bundle.test", Version: "v9.9.9", Timestamp: epoch}))
	if err != nil {
		t.Fatal(err)
	}
	var bom cdx.BOM
	if err := cdx.NewBOMDecoder(bytes.NewReader(out), cdx.BOMFileFormatJSON).Decode(&bom); err != nil {
		t.Fatal(err)
	}
	if bom.BOMFormat != "CycloneDX" || bom.Metadata.Component.Version != "v9.9.9" || bom.Metadata.Timestamp != "2023-11-14T22:13:20Z" {
		t.Fatalf("metadata %+v", bom.Metadata)
	}
	comps := *bom.Components
	if len(comps) != 2 || comps[0].PackageURL != "pkg:golang/github.com/emmansun/gmsm@v0.44.1" ||
		(*comps[0].Properties)[0].Value != "h1:ndOxtOlIpVp3F/hHBPhuJ5DUs2v/2ECpaT8GlHDHlOs=" {
		t.Fatalf("components:\n%s", out)
	}
	// A replaced module is listed as what was built, naming what it replaces.
	if comps[1].Name != "../ws" || !strings.Contains(string(out), "github.com/gobwas/ws@v1.5.0") {
		t.Fatalf("replaced module:\n%s", out)
	}
	if !strings.Contains(string(out), `"go:build:GOARCH"`) || !strings.Contains(string(out), "loong64") {
		t.Fatalf("build settings missing:\n%s", out)
	}
	if (*bom.Dependencies)[0].Ref != bom.Metadata.Component.BOMRef {
		t.Fatal("dependencies do not start at the application")
	}
	var anyJSON map[string]any
	if err := json.Unmarshal(out, &anyJSON); err != nil || anyJSON["specVersion"] != "1.7" {
		t.Fatalf("spec version %v (%v)", anyJSON["specVersion"], err)
	}
}

func TestConfig(t *testing.T) {
	got, err := Config("listen: \":8080\"\ndata_dir: \"./data\"\n")
	if err != nil || !strings.Contains(string(got), "data_dir: \"/var/lib/unigate\"\n") {
		t.Fatalf("%s %v", got, err)
	}
	if _, err := Config("listen: \":8080\"\n"); err == nil {
		t.Fatal("an example without data_dir was accepted")
	}
}
