package backends

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	pb "github.com/unigate/unigate/backends/proto"
)

// Plugin names in PluginMap: a plugin process serves any subset of them.
const (
	PluginBot    = "bot"
	PluginRouter = "router"
	PluginHook   = "hook"
)

// Handshake is shared by the gateway and every plugin. The magic cookie is
// not a security measure: it only stops a plugin binary run by hand from
// waiting for a host that never comes (see docs/backends.md for the
// handshake a plugin in another language performs).
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "UNIGATE_BACKEND_PLUGIN",
	MagicCookieValue: "5f1b8f0e2c7a4d39b6e0a1c4d8f27e63",
}

// PluginMap is the set of plugins the gateway can dispense. The Impl
// fields are nil: the host side only needs the client halves.
var PluginMap = map[string]plugin.Plugin{
	PluginBot:    &BotPlugin{},
	PluginRouter: &RouterPlugin{},
	PluginHook:   &HookPlugin{},
}

// BotPlugin serves (Impl set, plugin side) or consumes (host side) a Bot
// over gRPC.
type BotPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Bot
}

// GRPCServer registers the Bot service backed by p.Impl.
func (p *BotPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterBotServer(s, &botServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a Bot that calls the plugin.
func (p *BotPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &botClient{c: pb.NewBotClient(c)}, nil
}

// RouterPlugin serves or consumes a Router over gRPC.
type RouterPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Router
}

// GRPCServer registers the Router service backed by p.Impl.
func (p *RouterPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterRouterServer(s, &routerServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a Router that calls the plugin.
func (p *RouterPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &routerClient{c: pb.NewRouterClient(c)}, nil
}

// HookPlugin serves or consumes a Hook over gRPC.
type HookPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl Hook
}

// GRPCServer registers the Hook service backed by p.Impl.
func (p *HookPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterHookServer(s, &hookServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a Hook that calls the plugin.
func (p *HookPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &hookClient{c: pb.NewHookClient(c)}, nil
}

var (
	_ plugin.GRPCPlugin = (*BotPlugin)(nil)
	_ plugin.GRPCPlugin = (*RouterPlugin)(nil)
	_ plugin.GRPCPlugin = (*HookPlugin)(nil)

	_ Bot    = (*botClient)(nil)
	_ Router = (*routerClient)(nil)
	_ Hook   = (*hookClient)(nil)

	_ pb.BotServer    = (*botServer)(nil)
	_ pb.RouterServer = (*routerServer)(nil)
	_ pb.HookServer   = (*hookServer)(nil)
)

// ---- host side: Go interface → gRPC ----

type botClient struct{ c pb.BotClient }

func (b *botClient) Answer(ctx context.Context, req AnswerRequest) (Answer, error) {
	resp, err := b.c.Answer(ctx, answerRequestToPB(req))
	if err != nil {
		return Answer{}, err
	}
	return answerFromPB(resp), nil
}

type routerClient struct{ c pb.RouterClient }

func (r *routerClient) Rank(ctx context.Context, req RankRequest) (Ranking, error) {
	resp, err := r.c.Rank(ctx, rankRequestToPB(req))
	if err != nil {
		return Ranking{}, err
	}
	return rankingFromPB(resp), nil
}

type hookClient struct{ c pb.HookClient }

func (h *hookClient) Event(ctx context.Context, ev Event) error {
	_, err := h.c.Event(ctx, eventToPB(ev))
	return err
}

func (h *hookClient) Authenticate(ctx context.Context, cred Credentials) (Identity, error) {
	resp, err := h.c.Authenticate(ctx, credentialsToPB(cred))
	if err != nil {
		return Identity{}, err
	}
	return identityFromPB(resp), nil
}

// ---- plugin side: gRPC → Go interface ----

type botServer struct {
	pb.UnimplementedBotServer
	impl Bot
}

func (s *botServer) Answer(ctx context.Context, req *pb.AnswerRequest) (*pb.AnswerResponse, error) {
	a, err := s.impl.Answer(ctx, answerRequestFromPB(req))
	if err != nil {
		return nil, err
	}
	return answerToPB(a), nil
}

type routerServer struct {
	pb.UnimplementedRouterServer
	impl Router
}

func (s *routerServer) Rank(ctx context.Context, req *pb.RankRequest) (*pb.RankResponse, error) {
	r, err := s.impl.Rank(ctx, rankRequestFromPB(req))
	if err != nil {
		return nil, err
	}
	return rankingToPB(r), nil
}

type hookServer struct {
	pb.UnimplementedHookServer
	impl Hook
}

func (s *hookServer) Event(ctx context.Context, req *pb.EventRequest) (*pb.EventResponse, error) {
	if err := s.impl.Event(ctx, eventFromPB(req)); err != nil {
		return nil, err
	}
	return &pb.EventResponse{}, nil
}

func (s *hookServer) Authenticate(ctx context.Context, req *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	id, err := s.impl.Authenticate(ctx, credentialsFromPB(req))
	if err != nil {
		return nil, err
	}
	return identityToPB(id), nil
}
