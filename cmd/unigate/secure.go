package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/unigate/unigate/broker"
	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/internal/config"
)

// secureOptions builds the broker's secure channel from the crypto section:
// identity keys, the optional certificate chain, suites, tickets. Nil when
// the channel is off.
func secureOptions(c config.CryptoConfig) (*broker.SecureOptions, error) {
	if !c.Enabled {
		return nil, nil
	}
	var signers []crypto.Signer
	var keyPEMs [][]byte
	for _, path := range c.IdentityKeys {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("crypto.identity_keys: %w", err)
		}
		s, err := crypto.ParseSignerPEM(data)
		if err != nil {
			return nil, fmt.Errorf("crypto.identity_keys: %s: %w", path, err)
		}
		signers = append(signers, s)
		keyPEMs = append(keyPEMs, data)
	}
	cfg := &crypto.ServerConfig{Identities: signers, RekeyAfter: uint32(c.RekeyAfter)}
	if c.CertificateChain != "" {
		chain, err := os.ReadFile(c.CertificateChain)
		if err != nil {
			return nil, fmt.Errorf("crypto.certificate_chain: %w", err)
		}
		var cert *crypto.Certificate
		for _, key := range keyPEMs {
			if cert, err = crypto.LoadCertificatePEM(chain, key); err == nil {
				break
			}
		}
		if cert == nil {
			return nil, fmt.Errorf("crypto.certificate_chain: %s: its leaf carries none of crypto.identity_keys (%w)", c.CertificateChain, err)
		}
		cfg.Certificates = []*crypto.Certificate{cert}
	}
	allGM := true
	for _, name := range c.Suites {
		s := crypto.SuiteByName(name)
		if s == nil {
			return nil, fmt.Errorf("crypto.suites: unknown suite %q", name)
		}
		found := false
		for _, id := range signers {
			found = found || id.Public().Algorithm() == s.Signature
		}
		if !found {
			return nil, fmt.Errorf("crypto.suites: %s needs an identity key of algorithm %s in crypto.identity_keys", name, s.Signature)
		}
		allGM = allGM && s.Signature == crypto.SigSM2
		cfg.Suites = append(cfg.Suites, s)
	}
	if len(cfg.Suites) == 0 {
		return nil, errors.New("crypto.suites: no suite")
	}
	o := &broker.SecureOptions{Server: cfg, Required: c.Required, RequiredTenants: c.RequiredTenants}
	if c.Tickets {
		// An all-GM deployment seals its tickets with SM4-GCM too.
		aead := crypto.AES256GCM
		if allGM {
			aead = crypto.SM4GCM
		}
		ring, err := crypto.NewTicketKeyring(aead, 2)
		if err != nil {
			return nil, err
		}
		cfg.Tickets, cfg.TicketLifetime = ring, c.TicketTTL
		// A key seals for one ticket lifetime, then opens for one more.
		o.TicketRotation = c.TicketTTL
	}
	return o, nil
}
