package main

import (
	"encoding/hex"

	"github.com/unigate/unigate/broker"
	"github.com/unigate/unigate/internal/config"
	"github.com/unigate/unigate/web"
)

// webOptions is what the gateway's pages learn from the configuration:
// the console's canned replies, and the public side of the secure channel
// (suites, identity public keys, whether it is required) so that the
// widget and the console can start it. sec is nil when the channel is off.
func webOptions(cfg config.Config, sec *broker.SecureOptions) web.Options {
	o := web.Options{CannedReplies: cfg.Web.CannedReplies}
	if sec == nil || sec.Server == nil {
		return o
	}
	s := &web.Secure{Required: sec.Required}
	for _, suite := range sec.Server.Suites {
		s.Suites = append(s.Suites, suite.Name)
	}
	for _, id := range sec.Server.Identities {
		pub := id.Public()
		s.Keys = append(s.Keys, web.ServerKey{Alg: pub.Algorithm().String(), PublicKey: hex.EncodeToString(pub.Bytes())})
	}
	o.Secure = s
	return o
}
