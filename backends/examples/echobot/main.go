// Command echobot is an example Unigate bot plugin: it answers from a tiny
// keyword table and hands off to a human when nothing matches or the
// visitor asks for one. See README.md.
package main

import (
	"context"
	"strings"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/sdk"
)

type entry struct {
	keywords []string
	intent   string
	reply    string
}

var table = []entry{
	{[]string{"hello", "hi", "你好"}, "greeting", "Hello! How can I help you today?"},
	{[]string{"hours", "open", "营业时间"}, "opening_hours", "We are open 9:00-18:00, Monday to Friday."},
	{[]string{"refund", "退款"}, "billing/refund", "Refunds are processed within 5 working days."},
	{[]string{"human", "agent", "人工"}, "handoff", ""},
}

type echoBot struct{}

func (echoBot) Answer(_ context.Context, req backends.AnswerRequest) (backends.Answer, error) {
	text := strings.ToLower(req.Text)
	for _, e := range table {
		for _, k := range e.keywords {
			if strings.Contains(text, k) {
				if e.intent == "handoff" {
					return backends.Answer{Intent: e.intent, Confidence: 1, Handoff: true, Summary: req.Text}, nil
				}
				return backends.Answer{Text: e.reply, Intent: e.intent, Confidence: 0.9}, nil
			}
		}
	}
	return backends.Answer{Text: "echo: " + req.Text, Intent: "unknown", Confidence: 0.1, Summary: req.Text}, nil
}

func main() { sdk.ServeBot(echoBot{}) }
