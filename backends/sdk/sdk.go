// Package sdk is the integrator's side of Unigate backends: it serves a
// Bot, Router and/or Hook implementation as a hashicorp/go-plugin process
// that the gateway starts and supervises.
//
//	type myBot struct{}
//
//	func (myBot) Answer(ctx context.Context, req backends.AnswerRequest) (backends.Answer, error) {
//		return backends.Answer{Text: "hi", Intent: "greeting", Confidence: 0.9}, nil
//	}
//
//	func main() { sdk.ServeBot(myBot{}) }
//
// Serve never returns. The process must write nothing to stdout: go-plugin
// uses stdout for its handshake line. Log to stderr (the gateway collects
// it) — Logger returns a logger that does. The implementation's methods are
// called concurrently, one goroutine per gRPC call; each call's context is
// cancelled when the gateway's timeout for it expires.
package sdk

import (
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/unigate/unigate/backends"
)

// Plugins lists the implementations one plugin process serves; nil fields
// are not served.
type Plugins struct {
	Bot    backends.Bot
	Router backends.Router
	Hook   backends.Hook
}

// Serve serves the non-nil implementations in p and does not return. It
// exits the process with status 1 when p is empty or when the process was
// not started by a gateway (go-plugin prints an explanation to stderr).
func Serve(p Plugins) {
	set := plugin.PluginSet{}
	if p.Bot != nil {
		set[backends.PluginBot] = &backends.BotPlugin{Impl: p.Bot}
	}
	if p.Router != nil {
		set[backends.PluginRouter] = &backends.RouterPlugin{Impl: p.Router}
	}
	if p.Hook != nil {
		set[backends.PluginHook] = &backends.HookPlugin{Impl: p.Hook}
	}
	if len(set) == 0 {
		os.Stderr.WriteString("sdk.Serve: no implementation given\n")
		os.Exit(1)
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: backends.Handshake,
		Plugins:         set,
		GRPCServer:      plugin.DefaultGRPCServer,
		Logger:          Logger(),
	})
	os.Exit(0)
}

// ServeBot serves b as a Bot plugin.
func ServeBot(b backends.Bot) { Serve(Plugins{Bot: b}) }

// ServeRouter serves r as a Router plugin.
func ServeRouter(r backends.Router) { Serve(Plugins{Router: r}) }

// ServeHook serves h as a Hook plugin.
func ServeHook(h backends.Hook) { Serve(Plugins{Hook: h}) }

// Logger returns a logger writing JSON lines to stderr, which the gateway
// reads and re-logs under the plugin's name.
func Logger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Level:      hclog.Info,
		Output:     os.Stderr,
		JSONFormat: true,
	})
}
