// Package bundle writes and checks Unigate's offline release bundles.
//
// A bundle is a gzip-compressed tar file with one top directory,
// unigate-<version>-linux-<arch>/, that holds the binaries, the example
// configuration, the systemd, sysctl and limits files, the documentation,
// a CycloneDX SBOM per binary, and two checksum files listing every other
// file of the bundle:
//
//	SHA256SUMS   SHA-256 (FIPS 180-4), the format of coreutils' sha256sum
//	SM3SUMS      SM3 (GB/T 32905-2016), the same format
//
// Both lists use the "<hex digest>  <path>" lines that `sha256sum -c`
// reads, with paths relative to the top directory, sorted. [Verify] and
// [VerifyDir] check an archive or an unpacked bundle against both lists and
// report every difference: a file whose content does not match, a listed
// file that is missing, a file that no list names, and a malformed line.
//
// The checksum files inside a bundle detect damage and careless edits, not
// an attacker who rewrites the lists too: compare the digest of the
// tarball itself with the one published beside it (dist/SHA256SUMS and
// dist/SM3SUMS, written by `make bundle`) through a channel you trust.
//
// [Write] makes the archive reproducible: entries sorted by name, fixed
// owner, modes and modification time (the commit time), no gzip name or
// time, so two builds of one commit give the same bytes.
//
// [SBOM] turns a Go binary's embedded build information (the one
// `go version -m` prints) into a CycloneDX document, with
// github.com/CycloneDX/cyclonedx-go.
//
// Functions of this package are safe for concurrent use; they share no
// state.
package bundle
