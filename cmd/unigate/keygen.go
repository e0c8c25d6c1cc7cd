package main

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	ugcrypto "github.com/unigate/unigate/crypto"
)

// keygenOptions are the flags of `unigate keygen`.
type keygenOptions struct {
	alg   string        // "sm2" or "ed25519"
	out   string        // private key file (PKCS#8 PEM, mode 0600)
	force bool          // overwrite existing files
	cert  string        // when set: also a CA and a server certificate chain here
	ca    string        // CA file prefix: <ca>.pem and <ca>.key
	names string        // comma-separated DNS names / IP addresses of the server
	life  time.Duration // server certificate lifetime
}

// keygenCmd generates the server identity key of the secure channel (crypto/)
// and, with -cert, a self-signed CA and a server certificate for the
// certificate-chain mode. It prints what clients pin.
func keygenCmd(args []string, stdout, stderr io.Writer) error {
	var o keygenOptions
	fset := flag.NewFlagSet("unigate keygen", flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.StringVar(&o.alg, "alg", "sm2", "identity key `algorithm`: sm2 (GM suites) or ed25519 (INTL-PQ)")
	fset.StringVar(&o.out, "out", "unigate-identity.key", "private key `file` (PKCS#8 PEM, written with mode 0600)")
	fset.BoolVar(&o.force, "force", false, "overwrite existing key and certificate files")
	fset.StringVar(&o.cert, "cert", "", "also write a server certificate chain PEM to this `file`, issued by a new self-signed CA")
	fset.StringVar(&o.ca, "ca", "", "CA file `prefix` for -cert: PREFIX.pem and PREFIX.key (default: ca beside -cert)")
	fset.StringVar(&o.names, "names", "localhost,127.0.0.1", "comma-separated DNS `names` and IP addresses for -cert")
	fset.DurationVar(&o.life, "validity", 365*24*time.Hour, "server certificate `lifetime` for -cert")
	fset.Usage = func() {
		fmt.Fprintln(stderr, "usage: unigate keygen [-alg sm2|ed25519] [-out FILE] [-force] [-cert FILE [-ca PREFIX] [-names a,b] [-validity D]]")
		fset.PrintDefaults()
	}
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fset.NArg() > 0 {
		fmt.Fprintf(stderr, "unigate keygen: unexpected argument %q\n", fset.Arg(0))
		return errUsage
	}
	var alg ugcrypto.SignatureAlgorithm
	switch strings.ToLower(o.alg) {
	case "sm2":
		alg = ugcrypto.SigSM2
	case "ed25519":
		alg = ugcrypto.SigEd25519
	default:
		fmt.Fprintf(stderr, "unigate keygen: -alg must be sm2 or ed25519, not %q\n", o.alg)
		return errUsage
	}
	if o.cert != "" && o.ca == "" {
		o.ca = filepath.Join(filepath.Dir(o.cert), "ca")
	}
	// Refuse before generating anything, so that no file is half-written.
	if !o.force {
		paths := []string{o.out}
		if o.cert != "" {
			paths = append(paths, o.cert, o.ca+".pem", o.ca+".key")
		}
		for _, p := range paths {
			if _, err := os.Lstat(p); err == nil {
				return fmt.Errorf("%s exists; use -force to overwrite", p)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return keygen(o, alg, stdout)
}

func keygen(o keygenOptions, alg ugcrypto.SignatureAlgorithm, stdout io.Writer) error {
	key, err := ugcrypto.GenerateSigner(alg)
	if err != nil {
		return err
	}
	keyPEM, err := ugcrypto.MarshalSignerPEM(key)
	if err != nil {
		return err
	}
	pubPEM, err := ugcrypto.MarshalVerifierPEM(key.Public())
	if err != nil {
		return err
	}
	if err := writeSecretFile(o.out, keyPEM, o.force); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "private key:  %s (mode 0600)\n", o.out)
	fmt.Fprintf(stdout, "fingerprint:  %s\n", ugcrypto.Fingerprint(key.Public()))
	fmt.Fprintf(stdout, "public key:   %s\n", hex.EncodeToString(key.Public().Bytes()))
	fmt.Fprintf(stdout, "%s", pubPEM)
	if o.cert == "" {
		return nil
	}

	caKey, err := ugcrypto.GenerateSigner(alg)
	if err != nil {
		return err
	}
	caDER, err := ugcrypto.CreateCACertificate(caKey, ugcrypto.CertificateTemplate{CommonName: "Unigate channel CA"})
	if err != nil {
		return err
	}
	var dns []string
	var ips []net.IP
	for n := range strings.SplitSeq(o.names, ",") {
		if n = strings.TrimSpace(n); n == "" {
			continue
		}
		if ip := net.ParseIP(n); ip != nil {
			ips = append(ips, ip)
		} else {
			dns = append(dns, n)
		}
	}
	if len(dns)+len(ips) == 0 {
		return errors.New("-names is empty: clients check the server name against the certificate")
	}
	cn := o.names
	if len(dns) > 0 {
		cn = dns[0]
	}
	leafDER, err := ugcrypto.IssueServerCertificate(caDER, caKey, key, ugcrypto.CertificateTemplate{
		CommonName: cn, DNSNames: dns, IPAddresses: ips, Validity: o.life,
	})
	if err != nil {
		return err
	}
	// Check what we wrote loads as the server will load it.
	if _, err := ugcrypto.LoadCertificatePEM(ugcrypto.EncodeCertificatePEM(leafDER), keyPEM); err != nil {
		return err
	}
	caKeyPEM, err := ugcrypto.MarshalSignerPEM(caKey)
	if err != nil {
		return err
	}
	if err := writeSecretFile(o.ca+".key", caKeyPEM, o.force); err != nil {
		return err
	}
	if err := writePublicFile(o.ca+".pem", ugcrypto.EncodeCertificatePEM(caDER), o.force); err != nil {
		return err
	}
	if err := writePublicFile(o.cert, ugcrypto.EncodeCertificatePEM(leafDER), o.force); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "certificate:  %s (server chain, names %s)\n", o.cert, o.names)
	fmt.Fprintf(stdout, "CA:           %s (clients trust this root), key %s (mode 0600; keep it offline)\n", o.ca+".pem", o.ca+".key")
	return nil
}

// writeSecretFile writes data with mode 0600. Without force it fails if the file
// exists (O_EXCL, so a file appearing since the check is not overwritten either).
// With force it replaces the file atomically through a 0600 temporary file.
func writeSecretFile(path string, data []byte, force bool) error {
	return writeFile(path, data, 0o600, force)
}

func writePublicFile(path string, data []byte, force bool) error {
	return writeFile(path, data, 0o644, force)
}

func writeFile(path string, data []byte, mode os.FileMode, force bool) error {
	if !force {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s exists; use -force to overwrite", path)
			}
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			os.Remove(path)
			return err
		}
		return f.Close()
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename this fails harmlessly
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
