package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/unigate/unigate/broker"
	"github.com/unigate/unigate/broker/ticketstore"
	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/crypto/atrest"
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
		// openTickets shares the ring through JetStream; until then (and
		// for a broker without it) a key seals for one ticket lifetime,
		// then opens for one more.
		cfg.Tickets, cfg.TicketLifetime = ring, c.TicketTTL
		o.TicketRotation = c.TicketTTL
	}
	return o, nil
}

// ticketKeyHeader heads a ticket key file created on the first start.
const ticketKeyHeader = "# Unigate ticket key file: wraps the resumption ticket keys kept in JetStream (docs/crypto.md).\n" +
	"# Give every node of a cluster the same file. Keep it 0600, never in the data backup.\n"

// tickets is the secure channel's resumption state in JetStream: the ring
// of ticket keys and the seen set (broker/ticketstore).
type tickets struct {
	ring *ticketstore.Ring
	set  *metrics.Set
}

// openTickets makes sec's tickets cluster-wide and restart-proof: the
// keyring follows the bucket's ring for this node's wrapper (the at-rest
// master key when there is a master key file, else the ticket key file)
// and, in a cluster, single use is checked in the seen bucket (a single
// node keeps it in its session cache, snapshotted on shutdown). Nil when
// the channel or
// its tickets are off. Like openStores, it retries while a clustered
// JetStream is not ready to create the buckets.
func openTickets(cfg config.Config, js jetstream.JetStream, ar *atRest, sec *broker.SecureOptions, log *slog.Logger) (*tickets, error) {
	if sec == nil || sec.Server.Tickets == nil {
		return nil, nil
	}
	wrapper, source := ar.currentMaster(), "the at-rest master key"
	previous := ar.previousMasters() // their rings are carried over
	if wrapper == nil {
		path := cfg.TicketKeyPath()
		m, created, err := atrest.LoadOrCreateKeyFile(path, ticketKeyHeader)
		if err != nil {
			return nil, fmt.Errorf("crypto.ticket_key_file: %w", err)
		}
		if created {
			log.Info("created a new ticket key file; give every node of a cluster the same file", "file", path, "key", m.Current().ID())
		}
		wrapper, source, previous = m.Current(), path, olderKeys(m)
	}
	t := &tickets{set: metrics.NewSet()}
	lifetime := cfg.Crypto.TicketTTL
	wait := 30 * time.Second
	if cfg.Clustered() {
		wait = 2 * time.Minute
	}
	deadline := time.Now().Add(wait)
	var seen *ticketstore.SeenSet
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		var err error
		if seen == nil && cfg.Clustered() {
			seen, err = ticketstore.OpenSeenSet(ctx, js, ticketstore.SeenOptions{Replicas: cfg.NATS.Replicas, Metrics: t.set})
		}
		if err == nil {
			t.ring, err = ticketstore.OpenRing(ctx, js, sec.Server.Tickets, ticketstore.RingOptions{
				Replicas: cfg.NATS.Replicas,
				Wrapper:  wrapper,
				Previous: previous,
				Rotation: cfg.Crypto.TicketRotationPeriod(),
				Lifetime: lifetime,
				Logger:   log.With("component", "tickets"),
				Metrics:  t.set,
			})
		}
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("crypto.tickets: %w", err)
		}
		log.Info("waiting for JetStream (ticket buckets)", "err", err)
		time.Sleep(500 * time.Millisecond)
	}
	if seen != nil {
		// A single node keeps single use in its session cache: the bucket
		// would double the cost of a resumption for nothing another node
		// could replay.
		sec.Server.Seen = seen
	}
	sec.TicketRotation = 0 // the ring rotates in the cluster
	log.Info("resumption tickets shared through JetStream", "ring", t.ring.Name(), "wrapped_by", source,
		"rotation", cfg.Crypto.TicketRotationPeriod())
	return t, nil
}

func (t *tickets) close() {
	if t != nil {
		_ = t.ring.Close()
	}
}

func (t *tickets) metrics() *metrics.Set {
	if t == nil {
		return nil
	}
	return t.set
}
