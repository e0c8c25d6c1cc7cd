package crypto

// SuiteID identifies a suite on the wire.
type SuiteID uint8

// Suite IDs (docs/crypto.md, "Suites"). Never renumber.
const (
	SuiteGM     SuiteID = 1
	SuiteGMPQ   SuiteID = 2
	SuiteIntlPQ SuiteID = 3
)

// Suite is one row of the suite table: the primitives a channel uses. A hardware
// module replaces software primitives by building a Suite with the same ID and
// Signature algorithm from its own Hash, KEM and AEAD implementations.
type Suite struct {
	ID        SuiteID
	Name      string
	KEM       KEM
	Hash      Hash
	AEAD      AEAD
	Signature SignatureAlgorithm
}

// The built-in suites.
var (
	GM     = &Suite{ID: SuiteGM, Name: "GM", KEM: SM2ECDH, Hash: SM3, AEAD: SM4GCM, Signature: SigSM2}
	GMPQ   = &Suite{ID: SuiteGMPQ, Name: "GM-PQ", KEM: SM2MLKEM768, Hash: SM3, AEAD: SM4GCM, Signature: SigSM2}
	IntlPQ = &Suite{ID: SuiteIntlPQ, Name: "INTL-PQ", KEM: X25519MLKEM768, Hash: SHA256, AEAD: AES256GCM, Signature: SigEd25519}
)

// DefaultSuites is the default preference order (post-quantum first).
var DefaultSuites = []*Suite{GMPQ, GM, IntlPQ}

// SuiteByName returns the built-in suite called name ("GM", "GM-PQ", "INTL-PQ"), or nil.
func SuiteByName(name string) *Suite {
	for _, s := range DefaultSuites {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (s *Suite) String() string { return s.Name }

func findSuite(list []*Suite, id SuiteID) *Suite {
	for _, s := range list {
		if s.ID == id {
			return s
		}
	}
	return nil
}
