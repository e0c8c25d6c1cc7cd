package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"time"

	"github.com/unigate/unigate/internal/token"
)

// Options configures a Broker. The zero value of every field means its
// default, so Options{AllowAnonymous: true} is a working configuration.
type Options struct {
	// Logger receives the broker's rare log lines (shutdown, encoder bugs).
	// Nothing is logged per message. Default: discard.
	Logger *slog.Logger

	// Signer verifies visitor and agent tokens and signs resume tokens.
	// Default: a signer with a random key, which verifies no token (so only
	// anonymous visitors can connect) and whose resume tokens die with the
	// process. New fails if Signer is nil and AllowAnonymous is false.
	Signer *token.Signer

	// AllowAnonymous lets a Hello without a token in, as a visitor with a
	// random user id. When false such a Hello gets CodeUnauthenticated and
	// the connection is closed with 1008.
	AllowAnonymous bool

	// Shards is the number of conversation workers. Default 4×GOMAXPROCS.
	Shards int

	// QueueSize bounds each of the two queues of client requests of each
	// shard (the inbox of conversation requests, the setup queue of
	// hello, open, presence). A request arriving at a full queue is
	// answered with CodeOverloaded. Default 4096.
	QueueSize int

	// DefaultAgentCapacity is how many conversations an agent takes at
	// once when its Presence does not say. Default 5.
	DefaultAgentCapacity int

	// MaxAgentCapacity bounds the capacity an agent may ask for. Default 100.
	MaxAgentCapacity int

	// MaxQueue bounds the number of waiting conversations over all tenants;
	// an Open beyond it gets CodeQueueFull. Conversations queued again by a
	// transfer or a departed agent are never refused. Default 10000.
	MaxQueue int

	// PositionExact and PositionStep decide which queue position updates
	// are sent when a queue moves: every change of the first
	// PositionExact places, and further back only positions that are
	// multiples of PositionStep (a visitor at place 537 hears 530 later,
	// not 536 … 531). PositionStep 1 sends every change to every waiting
	// visitor: a departure from a queue of L then costs L−1 messages.
	// Defaults 100 and 10.
	PositionExact int
	PositionStep  int

	// MaxOpenPerVisitor bounds the conversations a visitor has open at
	// once; one more Open gets CodeAlreadyOpen. Default 1.
	MaxOpenPerVisitor int

	// ResumeTTL is how long a session, and the conversations of its user,
	// outlive the user's last connection. A Hello with the session's resume
	// token within ResumeTTL gets the same user id and its conversations
	// back. Default 10m.
	ResumeTTL time.Duration

	// ResumeTokenTTL is the lifetime written into resume tokens. It must
	// cover the longest connection plus ResumeTTL, since the token is
	// issued once, in the Welcome; the session table is what enforces
	// ResumeTTL. Default 24h.
	ResumeTokenTTL time.Duration

	// OfflineGrace is how long an agent whose last connection closed stays
	// online for assignment. Default 10s.
	OfflineGrace time.Duration

	// HistoryPerConversation is the number of messages a conversation keeps
	// in memory for replay (a ring: older ones are dropped). Without
	// History the ring is the whole history: default 1000. With History it
	// is a cache of the newest messages (resumes within it are served from
	// memory, older cursors from the stream; client message ids older than
	// it are recognised by the stream's duplicate window): default 64.
	HistoryPerConversation int

	// HistoryBytesPerConversation bounds the bytes (texts and client
	// message ids) of a conversation's in-memory history; older messages
	// are dropped to stay within it. Default 1 MiB without History, 64 KiB
	// with it.
	HistoryBytesPerConversation int

	// HeartbeatMillis is announced in Welcome: the server's ping interval.
	// It should match netpoll's ping interval. Default 30000.
	HeartbeatMillis uint32

	// MaxMessageBytes is announced in Welcome and enforced on every
	// message (CodeTooLarge). It should match netpoll's
	// WithMaxMessageBytes. Default 65536.
	MaxMessageBytes uint32

	// ServerVersion is announced in Welcome. Default "unigate".
	ServerVersion string

	// Now is the clock, for tests. Default time.Now.
	Now func() time.Time

	// History, when set, makes the broker durable: every message is
	// appended to it (one append in flight per conversation) and acked to
	// its sender and delivered to the others only after the store's ack.
	// Nil: the in-memory ring is the only history (tests, benchmarks).
	History History

	// Conversations keeps conversation metadata durably so that a
	// restarted node rebuilds conversations lazily. It requires History.
	Conversations ConvStore

	// MaxPendingPerConversation bounds the messages of one conversation
	// waiting for their durable append; one more gets CodeOverloaded.
	// Default 64.
	MaxPendingPerConversation int

	// Sessions caches resumable sessions so that a restarted node (whose
	// owner restored a snapshot) resumes them. Nil: sessions live in this
	// process only.
	Sessions SessionCache

	// ReplayLimit caps the messages one resume replays from the durable
	// history after a client's cursor. Default 256.
	ReplayLimit int

	// Limits, when set, admits each hello: a verified identity with
	// AdmitIdentity(tenant+"/"+subject), an anonymous visitor with
	// AdmitAnonymous(client IP). A refused hello gets CodeRateLimited and
	// the connection is closed, 1008 for a concurrency cap, 1013 (retry
	// later) for a rate. *limiter.Limiter satisfies it.
	Limits Limits

	// OriginAllowed, when set, is asked at each hello whether a browser
	// page of the connection's Origin (Peer's optional Origin() string;
	// "" for non-browsers) may act for the hello's tenant; no means error
	// CodeForbidden and close 1008.
	OriginAllowed func(tenant, origin string) bool

	// TypingRate and TypingBurst bound the typing and read-receipt updates
	// of one connection per second; PresenceRate and PresenceBurst its
	// presence updates. An update over its rate is dropped (answered with
	// CodeRateLimited when it carries an id) and counted; a connection
	// whose dropped updates themselves exceed TypingRate/TypingBurst is
	// flooding and is closed with 1008. Defaults 10/s burst 20 and 2/s
	// burst 10; a negative rate turns the limit off.
	TypingRate    float64
	TypingBurst   int
	PresenceRate  float64
	PresenceBurst int

	// Cluster makes this broker one node of several sharing NATS
	// (OpenCluster). It requires History and Conversations (the same
	// KVConvStore the Cluster watches). Nil: a single node.
	Cluster *Cluster
	// Secure, when set, accepts the application-layer secure channel
	// (package crypto) on every connection and applies its policy
	// (encryption required everywhere or per tenant); see secure.go and
	// docs/protocol.md, "Encrypted connections". Nil: a secure envelope is
	// refused like any kind the server does not accept.
	Secure *SecureOptions

	// Backends, when set, connects a bot (bot-first routing), a router
	// and a hook (events, password authentication); see Backends.
	Backends *Backends
}

// Limits is the admission the broker asks for on a hello; see
// Options.Limits.
type Limits interface {
	AdmitIdentity(sub string) (ok bool, retryAfter time.Duration, reason string)
	ReleaseIdentity(sub string)
	AdmitAnonymous(ip netip.Addr) (ok bool, retryAfter time.Duration, reason string)
	ReleaseAnonymous(ip netip.Addr)
}

// Defaults of Options.
const (
	DefaultQueueSize              = 4096
	DefaultAgentCapacity          = 5
	DefaultMaxAgentCapacity       = 100
	DefaultMaxQueue               = 10000
	DefaultPositionExact          = 100
	DefaultPositionStep           = 10
	DefaultMaxOpenPerVisitor      = 1
	DefaultResumeTTL              = 10 * time.Minute
	DefaultResumeTokenTTL         = 24 * time.Hour
	DefaultOfflineGrace           = 10 * time.Second
	DefaultHistoryPerConversation = 1000
	DefaultHistoryBytes           = 1 << 20
	DefaultCachePerConversation   = 64
	DefaultCacheBytes             = 64 << 10
	DefaultHeartbeatMillis        = 30000
	DefaultMaxMessageBytes        = 64 << 10
	DefaultServerVersion          = "unigate"
	DefaultMaxPendingPerConv      = 64
	DefaultReplayLimit            = 256
	DefaultTypingRate             = 10
	DefaultTypingBurst            = 20
	DefaultPresenceRate           = 2
	DefaultPresenceBurst          = 10
)

// errNoAuth is returned by New for a configuration nobody can log in with.
var errNoAuth = errors.New("broker: Signer is nil and AllowAnonymous is false: nobody could log in")

// withDefaults returns o with every zero field set to its default, or an
// error for a value that cannot work.
func (o Options) withDefaults() (Options, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Signer == nil {
		if !o.AllowAnonymous {
			return o, errNoAuth
		}
		s, err := token.NewSigner(randomBytes(32))
		if err != nil {
			return o, fmt.Errorf("broker: ephemeral signer: %w", err)
		}
		o.Signer = s
	}
	if o.Shards <= 0 {
		o.Shards = 4 * runtime.GOMAXPROCS(0)
	}
	if o.QueueSize <= 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.DefaultAgentCapacity <= 0 {
		o.DefaultAgentCapacity = DefaultAgentCapacity
	}
	if o.MaxAgentCapacity <= 0 {
		o.MaxAgentCapacity = DefaultMaxAgentCapacity
	}
	if o.DefaultAgentCapacity > o.MaxAgentCapacity {
		return o, fmt.Errorf("broker: DefaultAgentCapacity %d > MaxAgentCapacity %d", o.DefaultAgentCapacity, o.MaxAgentCapacity)
	}
	if o.MaxQueue <= 0 {
		o.MaxQueue = DefaultMaxQueue
	}
	if o.PositionExact <= 0 {
		o.PositionExact = DefaultPositionExact
	}
	if o.PositionStep <= 0 {
		o.PositionStep = DefaultPositionStep
	}
	if o.MaxOpenPerVisitor <= 0 {
		o.MaxOpenPerVisitor = DefaultMaxOpenPerVisitor
	}
	if o.ResumeTTL <= 0 {
		o.ResumeTTL = DefaultResumeTTL
	}
	if o.ResumeTokenTTL <= 0 {
		o.ResumeTokenTTL = DefaultResumeTokenTTL
	}
	if o.OfflineGrace <= 0 {
		o.OfflineGrace = DefaultOfflineGrace
	}
	if o.HistoryPerConversation <= 0 {
		o.HistoryPerConversation = DefaultHistoryPerConversation
		if o.History != nil {
			o.HistoryPerConversation = DefaultCachePerConversation
		}
	}
	if o.HistoryBytesPerConversation <= 0 {
		o.HistoryBytesPerConversation = DefaultHistoryBytes
		if o.History != nil {
			o.HistoryBytesPerConversation = DefaultCacheBytes
		}
	}
	if o.HeartbeatMillis == 0 {
		o.HeartbeatMillis = DefaultHeartbeatMillis
	}
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if o.ServerVersion == "" {
		o.ServerVersion = DefaultServerVersion
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Conversations != nil && o.History == nil {
		return o, errors.New("broker: Conversations requires History")
	}
	if o.MaxPendingPerConversation <= 0 {
		o.MaxPendingPerConversation = DefaultMaxPendingPerConv
	}
	if o.Cluster != nil && (o.History == nil || o.Conversations == nil) {
		return o, errors.New("broker: Cluster requires History and Conversations")
	}
	if o.ReplayLimit <= 0 {
		o.ReplayLimit = DefaultReplayLimit
	}
	if o.TypingRate == 0 {
		o.TypingRate, o.TypingBurst = DefaultTypingRate, max(o.TypingBurst, DefaultTypingBurst)
	}
	if o.PresenceRate == 0 {
		o.PresenceRate, o.PresenceBurst = DefaultPresenceRate, max(o.PresenceBurst, DefaultPresenceBurst)
	}
	if o.TypingBurst < 0 || o.PresenceBurst < 0 {
		return o, errors.New("broker: TypingBurst and PresenceBurst must not be negative")
	}
	return o, nil
}

// sweepInterval is the janitor's period: fine enough for the shortest of
// the timeouts it enforces, never busier than every 10ms nor lazier than 1s.
func (o Options) sweepInterval() time.Duration {
	d := min(o.ResumeTTL, o.OfflineGrace) / 4
	return min(max(d, 10*time.Millisecond), time.Second)
}
