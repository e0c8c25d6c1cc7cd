package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/builtin/faq"
	"github.com/unigate/unigate/crypto"
	"github.com/unigate/unigate/internal/config"
	"github.com/unigate/unigate/internal/token"
	"github.com/unigate/unigate/web"
)

// cannedFromConfig is a canned reply the test gateway has in
// web.canned_replies.
const cannedFromConfig = "Your order ships within 2 working days."

// hostPages serves pages of "another site" that embed the widget from a
// gateway, the way integrators do: another origin, and a strict CSP that
// lets in only the gateway's script and WebSocket.
type hostPages struct {
	*httptest.Server
	mu    sync.Mutex
	pages map[string]hostPage
}

type hostPage struct{ gateway, attrs string }

func newHostPages(t *testing.T) *hostPages {
	h := &hostPages{pages: map[string]hostPage{}}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		p, ok := h.pages[strings.TrimPrefix(r.URL.Path, "/page/")]
		h.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		gwHost := strings.TrimPrefix(p.gateway, "http://")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src "+p.gateway+"; connect-src ws://"+gwHost+
			"; img-src data:; style-src 'none'; base-uri 'none'; frame-ancestors 'none'")
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Another site</title></head>
<body><h1>Another site</h1><p>It embeds the Unigate widget from %s.</p>
<script src="%s/widget/unigate-widget.js" %s async></script></body></html>`, html.EscapeString(p.gateway), p.gateway, p.attrs)
	}))
	t.Cleanup(h.Close)
	return h
}

// add registers a page embedding the widget of gateway (an origin) with
// extra script attributes, and returns its URL.
func (h *hostPages) add(name, gateway, attrs string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pages[name] = hostPage{gateway: gateway, attrs: attrs}
	return h.URL + "/page/" + name
}

// sentEnvelopes decodes the plaintext JSON envelopes a page sent.
func sentEnvelopes(t *testing.T, b *browser, name string) []map[string]json.RawMessage {
	t.Helper()
	var out []map[string]json.RawMessage
	for _, f := range b.framesOf(name) {
		var env map[string]json.RawMessage
		if f.Sent && json.Unmarshal([]byte(f.Data), &env) == nil {
			out = append(out, env)
		}
	}
	return out
}

// webHumanButton: on another site's page (cross-origin, strict CSP), a
// Chinese visitor presses 转人工 ("talk to a human"): it goes through the
// normal path (open, then the message), the open carries the visitor
// context (region from data-region, language, page), and the queue shows in
// Chinese. With bot-first routing the FAQ bot hands off on this message.
func webHumanButton(t *testing.T, b *browser, hosts *hostPages) {
	p := b.page(t, "zh-host")
	p.chinese()
	page := hosts.add("zh", b.origin, `data-region="cn-east"`)
	p.do("open the host page", chromedp.Navigate(page))
	p.wait("widget connected", wBox+`.dataset.conn === 'online'`)
	p.do("open the widget", chromedp.Click(chromedp.JSPath(wRoot+`.querySelector('.launcher')`)))
	p.wait("talk-to-a-human button", wRoot+`.querySelector('.human').textContent === '转人工' && !`+wRoot+`.querySelector('.quick').hidden`)
	p.do("press it", chromedp.Click(chromedp.JSPath(wRoot+`.querySelector('.human')`)))
	p.wait("queued (or leave-a-message when nobody is online)", wBox+`.dataset.state === 'queued' && (`+wRoot+`.querySelector('.banner').textContent === '下一位就是您。' || `+wBox+`.dataset.leave === 'true') && `+
		wHas("转人工")+` && `+wMsgs+`[0].dataset.seq !== ''`)
	p.wait("no button while waiting for a human", wRoot+`.querySelector('.quick').hidden`)

	var open struct{ Region, Language, Page string }
	found := false
	for _, env := range sentEnvelopes(t, b, "zh-host") {
		if raw, ok := env["open"]; ok {
			found = json.Unmarshal(raw, &open) == nil
		}
	}
	if !found || open.Region != "cn-east" || open.Language != "zh-CN" || open.Page != hosts.URL+"/page/zh" {
		t.Fatalf("open sent %+v (found %v), want region cn-east, language zh-CN, page %s", open, found, hosts.URL+"/page/zh")
	}
	// End it: the other subtests want an empty queue.
	p.do("end the conversation", chromedp.Click(chromedp.JSPath(wRoot+`.querySelector('.end')`)))
	p.wait("closed", wBox+`.dataset.state === 'closed'`)
}

// botAnswer is what the gateway's FAQ bot (the embedded sample knowledge
// base) answers req: the test checks that the page shows exactly that, and
// that a question it relies on is one the bot answers on its own.
func botAnswer(t *testing.T, req backends.AnswerRequest) backends.Answer {
	t.Helper()
	bot, err := faq.New(faq.SampleKB())
	if err != nil {
		t.Fatal(err)
	}
	a, err := bot.Answer(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// webBotFirst: bot-first routing with the real FAQ bot (backends.bot: faq,
// the sample knowledge base), in the browser, end to end.
//
// A. On /demo the visitor asks a question the bot answers above its
// threshold and sees the answer, labelled as the assistant's, with the
// "Talk to a human" button. Agent a-bot is online but busy (capacity 1,
// held by a gorilla/websocket visitor the bot handed over first), so the
// button's hand-off leaves the visitor queued: the bot's holding reply, the
// hand-off notice, "You are next in the queue." The agent makes room
// (capacity 2) and gets the conversation with its history and what the
// bot understood (intent, summary) and the router's explanation and the
// visitor's context; the agent answers, the visitor sees it. The agent
// closes it; the visitor asks something the bot cannot answer: "The
// assistant could not answer that…", and the agent gets it.
//
// B. On another site's page of tenant shop2, where no agent is online, the
// bot hands the visitor over: the leave-a-message form; contact and message
// leave as two sends, in that order; an agent of shop2 signs in later, gets
// the conversation with the left message and answers. (The queue's wait
// estimate: webQueueETA.)
func webBotFirst(t *testing.T, b *browser, hosts *hostPages) {
	g := startGateway(t, func(c *config.Config) { c.Backends.Bot = "faq" })
	origin := b.allowGateway(g)
	threshold := g.cfg.Backends.BotThreshold
	notes := `[...` + wRoot + `.querySelectorAll('.note')].map(n => n.textContent)`
	field := func(name string) string {
		return `(document.querySelector('#ctx dd[data-field=` + name + `]') || {}).textContent`
	}

	question := "What are your opening hours?"
	answer := botAnswer(t, backends.AnswerRequest{Text: question, Language: "en"})
	if answer.Handoff || answer.Confidence < threshold || answer.Text == "" {
		t.Fatalf("the sample knowledge base does not answer %q on its own: %+v (threshold %v)", question, answer, threshold)
	}
	unsure := "Do you sell bicycles?"
	if a := botAnswer(t, backends.AnswerRequest{Text: unsure, Language: "en"}); a.Handoff || a.Confidence >= threshold {
		t.Fatalf("the bot is sure of %q: %+v", unsure, a)
	}

	// A: agent a-bot, capacity 1, taken by a visitor the bot handed over.
	a := b.pageAt(t, "bot-agent", origin)
	a.consoleLogin(agentToken(t, g, "a-bot"))
	a.do("capacity 1", chromedp.SetValue(chromedp.ID("capacity"), "1"), chromedp.Click(chromedp.CSS("#presence button[type=submit]")))
	busy := dialJSON(t, g.srv.Addr())
	busy.send(map[string]any{"hello": map[string]any{}})
	busy.next("welcome")
	busy.send(map[string]any{"open": map[string]any{}})
	busyConv := busy.next("conversation")["conversationId"].(string)
	busy.send(map[string]any{"send": map[string]any{"conversationId": busyConv, "clientMsgId": "b1", "text": "talk to a human"}})
	a.wait("the first visitor's conversation", fmt.Sprintf(`document.querySelector('li[data-conv=%q][data-mine=true]')`, busyConv))

	v := b.pageAt(t, "bot-visitor", origin)
	v.do("open /demo", chromedp.Navigate(origin+"/demo"))
	v.wait("widget connected", wBox+`.dataset.conn === 'online'`)
	v.do("open the widget", chromedp.Click(chromedp.JSPath(wRoot+`.querySelector('.launcher')`)))
	v.do("ask", chromedp.SendKeys(chromedp.JSPath(wRoot+`.querySelector('textarea')`), question+kb.Enter))
	v.wait("the bot's answer", wBox+`.dataset.state === 'bot' && `+notes+`.includes('You are chatting with our virtual assistant.') && `+wHas(answer.Text)+` && `+
		wRoot+`.querySelector('.msg.bot .who').textContent === 'AssistantBot' && `+wRoot+`.querySelector('.msg.bot .tag').textContent === 'Bot' && `+
		`!`+wRoot+`.querySelector('.quick').hidden && `+wRoot+`.querySelector('.human').textContent === 'Talk to a human'`)
	shots := t.TempDir()
	v.screenshot(shots, "widget-bot.png")

	v.do("talk to a human", chromedp.Click(chromedp.JSPath(wRoot+`.querySelector('.human')`)))
	human := "Talk to a human"
	handoff := botAnswer(t, backends.AnswerRequest{Text: human, Language: "en",
		History: []backends.HistoryMessage{{From: "visitor", Text: question}, {From: "bot", Text: answer.Text}}})
	if !handoff.Handoff || handoff.Text == "" || handoff.Intent == "" {
		t.Fatalf("the bot does not hand off on %q: %+v", human, handoff)
	}
	v.wait("queued behind the busy agent", wBox+`.dataset.state === 'queued' && `+wBox+`.dataset.position === '1' && `+wBox+`.dataset.leave !== 'true' && `+
		notes+`.includes('Connecting you to a human agent…') && `+wHas(human)+` && `+wHas(handoff.Text)+` && `+
		wRoot+`.querySelector('.banner').textContent === 'You are next in the queue.' && `+wRoot+`.querySelector('.quick').hidden`)
	conv := evalJS[string](v, `window.UnigateWidget.widget.conv.id`)

	a.do("make room", chromedp.SetValue(chromedp.ID("capacity"), "2"), chromedp.Click(chromedp.CSS("#presence button[type=submit]")))
	a.wait("assigned", fmt.Sprintf(`document.querySelector('li[data-conv=%q][data-mine=true]')`, conv))
	a.do("select it", chromedp.Click(chromedp.CSS(fmt.Sprintf(`li[data-conv=%q] button`, conv))))
	a.wait("history, bot messages labelled", fmt.Sprintf(`document.body.dataset.selected === %q && `, conv)+cHas(question)+` && `+cHas(answer.Text)+` && `+cHas(human)+` && `+cHas(handoff.Text)+` && `+
		`[...document.querySelectorAll('#log .msg')].filter(n => n.querySelector('.bubble').textContent === `+jsString(answer.Text)+`)[0].classList.contains('bot')`)
	a.wait("what the bot understood, the router and the visitor", field("intent")+` === `+jsString(handoff.Intent)+` && `+
		field("summary")+`.includes(`+jsString(question)+`) && `+field("summary")+`.includes(`+jsString(human)+`) && `+
		field("routing")+`.includes('a-bot 0.') && `+field("language")+` !== '' && `+field("page")+` === `+jsString(origin+"/demo")+` && `+
		`[...document.querySelectorAll('#ctx dt')].some(d => d.textContent === 'Why you (router)')`)
	a.screenshot(shots, "console-bot.png")
	v.wait("a human joined", wBox+`.dataset.state === 'assigned' && `+notes+`.includes('Agent a-bot joined the conversation.')`)
	reply := "Hello, I am a human. We open at 9."
	a.do("the agent answers", chromedp.SendKeys(chromedp.ID("input"), reply+kb.Enter))
	v.wait("the agent's answer", wHas(reply))
	checkOnce(t, "bot visitor", widgetTranscript(v), []string{question, answer.Text, human, handoff.Text, reply})

	// The agent closes it; the visitor's next question is one the bot is
	// not sure of.
	a.do("close", chromedp.SetValue(chromedp.ID("disposition"), "resolved"), chromedp.Click(chromedp.ID("do-close")))
	v.wait("closed", wBox+`.dataset.state === 'closed'`)
	v.do("ask what the bot cannot answer", chromedp.SendKeys(chromedp.JSPath(wRoot+`.querySelector('textarea')`), unsure+kb.Enter))
	v.wait("handed over for low confidence", wBox+`.dataset.state !== 'closed' && `+notes+`.includes('The assistant could not answer that. Connecting you to a human agent…') && `+wHas(unsure))
	conv2 := evalJS[string](v, `window.UnigateWidget.widget.conv.id`)
	a.wait("the second conversation", fmt.Sprintf(`document.querySelector('li[data-conv=%q][data-mine=true]')`, conv2))
	v.wait("assigned again", wBox+`.dataset.state === 'assigned'`)
	if conv2 == conv {
		t.Fatalf("the second question went to the closed conversation %s", conv)
	}

	// B: tenant shop2, nobody online: leave a message.
	l := b.pageAt(t, "bot-leave", origin)
	l.do("open the shop2 page", chromedp.Navigate(hosts.add("shop2", origin, `data-tenant="shop2" data-lang="en" data-open="true"`)))
	l.wait("widget connected", wBox+`.dataset.conn === 'online'`)
	l.do("ask", chromedp.SendKeys(chromedp.JSPath(wRoot+`.querySelector('textarea')`), unsure+kb.Enter))
	l.wait("leave-a-message form", wBox+`.dataset.leave === 'true' && !`+wRoot+`.querySelector('.leave').hidden && `+wRoot+`.querySelector('.banner').textContent === '' && `+
		notes+`.some(n => n.startsWith('No agent is online right now.')) && `+wRoot+`.querySelector('label[for=ug-contact]').textContent === 'Email or phone (optional)'`)
	l.do("contact", chromedp.SendKeys(chromedp.JSPath(wRoot+`.querySelector('#ug-contact')`), "me@example.com"))
	left := "Please call me back about order 77."
	l.do("message", chromedp.SendKeys(chromedp.JSPath(wRoot+`.querySelector('textarea')`), left+kb.Enter))
	l.wait("message left", notes+`.includes('Message left. An agent will reply when one is online.') && `+wMsgs+`.every(n => n.dataset.seq !== '')`)
	l.screenshot(shots, "widget-leave-message.png")
	leaveConv := evalJS[string](l, `window.UnigateWidget.widget.conv.id`)
	var texts []string
	for _, env := range sentEnvelopes(t, b, "bot-leave") {
		var s struct{ ConversationID, Text string }
		if raw, ok := env["send"]; ok && json.Unmarshal(raw, &s) == nil && s.ConversationID == leaveConv {
			texts = append(texts, s.Text)
		}
	}
	if len(texts) != 3 || texts[0] != unsure || texts[1] != "Contact: me@example.com" || texts[2] != left {
		t.Fatalf("sends %q, want the question, then the contact, then the message", texts)
	}
	sa := b.pageAt(t, "shop2-agent", origin)
	sa.consoleLogin(agentTokenOf(t, g, "a-shop2", "shop2"))
	sa.wait("the left message", fmt.Sprintf(`document.body.dataset.selected === %q && `, leaveConv)+cHas(unsure)+` && `+cHas("Contact: me@example.com")+` && `+cHas(left))
	callback := "We will call you back today."
	sa.do("answer", chromedp.SendKeys(chromedp.ID("input"), callback+kb.Enter))
	l.wait("the answer", wBox+`.dataset.state === 'assigned' && `+wHas(callback))
	checkOnce(t, "leave-a-message visitor", widgetTranscript(l), []string{unsure, "Contact: me@example.com", left, callback})
}

// webRefusals: a gateway with tiny limits. A second anonymous visitor from
// one address is refused at its hello (close 1008, "retry in 10 s"): the
// widget says the service is busy and waits at least what the server said,
// then gets in once the first goes to another page (the widget closes its
// connection when the page enters the back/forward cache). A page of a site the tenant does not
// allow is refused for good (2003, close 1008): "not allowed", no retry. A
// full gateway (max_connections) refuses the upgrade itself with 503, which
// a browser cannot read: the widget says it cannot reach the service and
// backs off until there is room.
func webRefusals(t *testing.T, b *browser, hosts *hostPages) {
	g := startGateway(t, func(c *config.Config) {
		c.Limits.AnonymousPerIPConnections = 1
		c.WebSocket.TenantOrigins = []string{"locked=https://only.example.test"}
	})
	origin := b.allowGateway(g)
	first := b.pageAt(t, "refusal-first", origin)
	first.do("open /demo", chromedp.Navigate(origin+"/demo"))
	first.wait("first visitor connected", wBox+`.dataset.conn === 'online'`)
	second := b.pageAt(t, "refusal-second", origin)
	second.do("open /demo", chromedp.Navigate(origin+"/demo"))
	second.wait("busy, with the server's wait", wBox+`.dataset.wait === 'busy' && /^The service is busy\. Retrying in \d+ s…$/.test(`+wRoot+`.querySelector('.sub').textContent) && `+
		wRoot+`.querySelector('[role=status].sr').textContent.startsWith('The service is busy.')`)
	if wait := evalJS[int](second, `window.UnigateWidget.widget.connDetail.inMillis`); wait < 10000 || wait > 12500 {
		t.Errorf("the second visitor waits %d ms, want the server's 10 s plus at most a quarter", wait)
	}
	// The first visitor goes to another page. Chromium keeps the page in
	// its back/forward cache; the widget closes its connection on pagehide,
	// so the gateway gets the slot back.
	first.do("the first visitor leaves", chromedp.Navigate("about:blank"))
	second.wait("the second gets in after its wait", wBox+`.dataset.conn === 'online' && `+wBox+`.dataset.wait === ''`)
	if n := evalJS[int](second, `window.UnigateWidget.widget.client.stats.dials`); n != 2 {
		t.Errorf("the second visitor dialled %d times, want 2 (refused, then after the server's wait)", n)
	}

	second.close() // its slot, for the next page
	for deadline := time.Now().Add(10 * time.Second); g.limiter.Connections() > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the gateway still holds %d connections after both visitors left", g.limiter.Connections())
		}
	}

	locked := b.pageAt(t, "refusal-locked", origin)
	locked.do("open a page the tenant does not allow", chromedp.Navigate(hosts.add("locked", origin, `data-tenant="locked" data-open="true"`)))
	locked.wait("not allowed", wBox+`.dataset.wait === 'failed' && `+wRoot+`.querySelector('.sub').textContent === 'Not allowed' && `+
		wRoot+`.querySelector('.alert').textContent === 'This chat is not available here (not allowed).'`)
	if s := evalJS[map[string]any](locked, `(() => { const c = window.UnigateWidget.widget.client; return {dials: c.stats.dials, timer: c.timer, failed: !!c.failed}; })()`); s["dials"] != 1.0 || s["timer"] != 0.0 || s["failed"] != true {
		t.Errorf("refused page: %v, want one dial, no retry scheduled", s)
	}

	full := startGateway(t, func(c *config.Config) { c.MaxConnections = 1 })
	fullOrigin := b.allowGateway(full)
	b.expect("Unexpected response code: 503")
	one := b.pageAt(t, "full-first", fullOrigin)
	one.do("open /demo", chromedp.Navigate(fullOrigin+"/demo"))
	one.wait("connected", wBox+`.dataset.conn === 'online'`)
	two := b.pageAt(t, "full-second", fullOrigin)
	two.do("open /demo", chromedp.Navigate(fullOrigin+"/demo"))
	two.wait("cannot reach (503 on the upgrade)", wBox+`.dataset.wait === 'unreachable' && /^Cannot reach the service \(it may be busy\)\. Retrying in \d+ s…$/.test(`+wRoot+`.querySelector('.sub').textContent)`)
	one.close() // the first leaves
	two.wait("room again", wBox+`.dataset.conn === 'online'`)
}

// webSecure: the secure channel in the browser, every suite, against real
// gateways.
//
// Gateway A requires the channel (crypto.required) and holds an SM2 and an
// Ed25519 identity, suites GM-PQ, GM, INTL-PQ. Its console learns the
// channel from /console/config.json and runs the gateway's preferred suite
// (GM-PQ). Visitors on another site's page pin the gateway's key and ask
// for GM (data-crypto="gm", the GM-only build), GM-PQ (the full build) and
// INTL-PQ (Ed25519 key, the INTL-PQ-only build): each completes its
// handshake, chats with the agent both ways, and every WebSocket message of
// every page is a secure envelope with no chat text in clear (DevTools
// frame events). /demo goes encrypted from its first dial with what the
// widget script says (GM-PQ). A page pinning another key stops with the
// verification sentence and does not retry.
//
// Gateway B allows INTL-PQ only (a post-quantum policy): a page that offers
// GM alone is refused at the handshake (close 1008, "no cipher suite in
// common"), shows so, never retries and never says hello in clear; a page
// offering GM and INTL-PQ gets INTL-PQ; /demo runs INTL-PQ.
//
// In an insecure context (a page of http://insecure.test, mapped to
// 127.0.0.1: no crypto.subtle) the client runs on its @noble fallbacks:
// INTL-PQ (X25519, Ed25519, SHA-256/HMAC, AES-256-GCM) and GM (the key
// id's SHA-256) both complete and chat.
func webSecure(t *testing.T, b *browser, hosts *hostPages) {
	sm2Path, sm2 := writeIdentity(t, crypto.SigSM2)
	edPath, ed := writeIdentity(t, crypto.SigEd25519)
	g := startGateway(t, func(c *config.Config) {
		c.Crypto.Enabled = true
		c.Crypto.IdentityKeys = []string{sm2Path, edPath}
		c.Crypto.Suites = []string{"GM-PQ", "GM", "INTL-PQ"}
		c.Crypto.Required = true
	})
	origin := b.allowGateway(g)
	sm2Key, edKey := hex.EncodeToString(sm2.Public().Bytes()), hex.EncodeToString(ed.Public().Bytes())

	a := b.pageAt(t, "secure-agent", origin)
	a.consoleLogin(agentToken(t, g, "a-secure"))
	a.do("room for every visitor below", chromedp.SetValue(chromedp.ID("capacity"), "8"), chromedp.Click(chromedp.CSS("#presence button[type=submit]")))
	a.wait("console encrypted with the gateway's first suite", `document.body.dataset.secure === 'GM-PQ' && document.getElementById('conn').textContent.includes('Encrypted (GM-PQ)')`)

	// chat: a visitor page (attrs pin keys and suites) completes the
	// handshake with suite, writes, the agent answers, and nothing of it
	// crossed the WebSocket in clear.
	chat := func(name, page, suite, module string) *page {
		t.Helper()
		v := b.pageAt(t, name, origin)
		v.do("open "+page, chromedp.Navigate(page))
		v.wait("encrypted with "+suite, fmt.Sprintf(`%s.dataset.conn === 'online' && %s.dataset.secure === %q && %s.querySelector('.sub').textContent === 'Online · encrypted (%s)'`, wBox, wBox, suite, wRoot, suite))
		secret := fmt.Sprintf("%s 加密测试: my card ends in 4242", suite)
		v.do("visitor writes", chromedp.SendKeys(chromedp.JSPath(wRoot+`.querySelector('textarea')`), secret+kb.Enter))
		v.wait("stored", wMsgs+`.length === 1 && `+wMsgs+`[0].dataset.seq === '1'`)
		conv := evalJS[string](v, `window.UnigateWidget.widget.conv.id`)
		a.wait("assigned to the agent", fmt.Sprintf(`document.querySelector('li[data-conv=%q][data-mine=true]')`, conv))
		a.do("select it", chromedp.Click(chromedp.CSS(fmt.Sprintf(`li[data-conv=%q] button`, conv))))
		a.wait("the visitor's message", fmt.Sprintf(`document.body.dataset.selected === %q && `, conv)+cHas(secret))
		reply := "Received over " + suite + ", card 4242."
		a.do("agent replies", chromedp.SendKeys(chromedp.ID("input"), reply+kb.Enter))
		v.wait("reply", wHas(reply))
		checkOnce(t, name, widgetTranscript(v), []string{secret, reply})
		if got := evalJS[[]string](v, `performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/widget/unigate-crypto'))`); len(got) != 1 || !strings.Contains(got[0], module+"?v=") {
			t.Errorf("%s loaded the crypto client %v, want %s only", name, got, module)
		}
		return v
	}
	allSecure := func(name string) {
		t.Helper()
		frames := b.framesOf(name)
		if len(frames) < 6 {
			t.Fatalf("%s: %d WebSocket messages", name, len(frames))
		}
		for _, f := range frames {
			var env map[string]json.RawMessage
			if err := json.Unmarshal([]byte(f.Data), &env); err != nil || len(env) != 1 || env["secure"] == nil {
				t.Fatalf("%s: a WebSocket message that is not a secure envelope (sent %v): %.200s", name, f.Sent, f.Data)
			}
			if strings.Contains(f.Data, "4242") || strings.Contains(f.Data, "Received over") {
				t.Fatalf("%s: chat text in clear: %.200s", name, f.Data)
			}
		}
	}
	chat("gm-visitor", hosts.add("gm", origin, fmt.Sprintf(`data-crypto="gm" data-crypto-key=%q data-open="true"`, sm2Key)), "GM", web.CryptoGMPath)
	chat("gmpq-visitor", hosts.add("gm-pq", origin, fmt.Sprintf(`data-crypto="gm-pq" data-crypto-key=%q data-open="true"`, sm2Key)), "GM-PQ", web.CryptoPath)
	chat("intl-visitor", hosts.add("intl-pq", origin, fmt.Sprintf(`data-crypto="intl-pq" data-crypto-key=%q data-open="true"`, edKey)), "INTL-PQ", web.CryptoIntlPath)
	for _, name := range []string{"gm-visitor", "gmpq-visitor", "intl-visitor", "secure-agent"} {
		allSecure(name)
	}

	// The gateway's own demo page sets nothing: the widget learns from its
	// script that the gateway requires the channel, its preferred suite and
	// keys.
	d := b.pageAt(t, "secure-demo", origin)
	d.do("open /demo", chromedp.Navigate(origin+"/demo"))
	d.wait("encrypted because the gateway requires it", wBox+`.dataset.conn === 'online' && `+wBox+`.dataset.secure === 'GM-PQ'`)
	if n := evalJS[int](d, `window.UnigateWidget.widget.client.stats.dials`); n != 1 {
		t.Errorf("demo page dialled %d times, want 1 (encrypted from the start)", n)
	}

	// Pinning another key: the gateway's signature does not match, the
	// widget stops (a man in the middle, or a wrong pin) and says so.
	_, other := writeIdentity(t, crypto.SigSM2)
	w := b.pageAt(t, "gm-wrong-pin", origin)
	w.do("open a page pinning another key", chromedp.Navigate(hosts.add("gm-wrong", origin,
		fmt.Sprintf(`data-crypto="gm" data-crypto-key=%q data-open="true"`, hex.EncodeToString(other.Public().Bytes())))))
	w.wait("refused", wBox+`.dataset.wait === 'failed' && `+wRoot+`.querySelector('.alert').textContent.startsWith('The encrypted connection could not be verified')`)
	if s := evalJS[map[string]any](w, `(() => { const c = window.UnigateWidget.widget.client; return {dials: c.stats.dials, timer: c.timer, code: c.failed && c.failed.message}; })()`); s["dials"] != 1.0 || s["timer"] != 0.0 {
		t.Errorf("wrong pin: %v, want one dial and no retry", s)
	}

	// Gateway B: INTL-PQ only.
	pq := startGateway(t, func(c *config.Config) {
		c.Crypto.Enabled = true
		c.Crypto.IdentityKeys = []string{sm2Path, edPath}
		c.Crypto.Suites = []string{"INTL-PQ"}
		c.Crypto.Required = true
	})
	pqOrigin := b.allowGateway(pq)
	down := b.pageAt(t, "pq-only-gm", pqOrigin)
	down.do("a page that offers GM alone", chromedp.Navigate(hosts.add("pq-only-gm", pqOrigin, fmt.Sprintf(`data-crypto="gm" data-crypto-key=%q data-open="true"`, sm2Key))))
	down.wait("refused: no suite in common", wBox+`.dataset.wait === 'failed' && `+wRoot+`.querySelector('.alert').textContent.startsWith('The server refused the encryption this page asks for')`)
	if s := evalJS[map[string]any](down, `(() => { const c = window.UnigateWidget.widget.client; return {dials: c.stats.dials, timer: c.timer, close: c.failed && c.failed.close, reason: c.failed && c.failed.message}; })()`); s["dials"] != 1.0 || s["timer"] != 0.0 || s["close"] != 1008.0 {
		t.Errorf("GM page on an INTL-PQ-only gateway: %v, want one dial, close 1008, no retry", s)
	}
	frames := b.framesOf("pq-only-gm")
	if len(frames) != 1 || !frames[0].Sent || !strings.HasPrefix(frames[0].Data, `{"secure":`) {
		t.Errorf("GM page on an INTL-PQ-only gateway exchanged %d messages (%v), want its ClientHello alone", len(frames), frames)
	}
	both := b.pageAt(t, "pq-both", pqOrigin)
	both.do("a page that offers GM, then INTL-PQ", chromedp.Navigate(hosts.add("pq-both", pqOrigin, fmt.Sprintf(`data-crypto="gm,intl-pq" data-crypto-key="%s,%s" data-open="true"`, sm2Key, edKey))))
	both.wait("the gateway's policy picks INTL-PQ", wBox+`.dataset.conn === 'online' && `+wBox+`.dataset.secure === 'INTL-PQ'`)
	both.do("visitor writes", chromedp.SendKeys(chromedp.JSPath(wRoot+`.querySelector('textarea')`), "post-quantum only 4242"+kb.Enter))
	both.wait("stored over INTL-PQ", wMsgs+`.length === 1 && `+wMsgs+`[0].dataset.seq === '1'`)
	allSecureFew := func(name string) {
		for _, f := range b.framesOf(name) {
			if !strings.HasPrefix(f.Data, `{"secure":`) || strings.Contains(f.Data, "4242") {
				t.Fatalf("%s: %.200s", name, f.Data)
			}
		}
	}
	allSecureFew("pq-both")
	pd := b.pageAt(t, "pq-demo", pqOrigin)
	pd.do("open /demo", chromedp.Navigate(pqOrigin+"/demo"))
	pd.wait("INTL-PQ from the widget script", wBox+`.dataset.conn === 'online' && `+wBox+`.dataset.secure === 'INTL-PQ'`)

	// An insecure context: no WebCrypto, the @noble fallbacks.
	insecure := strings.Replace(hosts.URL, "127.0.0.1", "insecure.test", 1)
	b.allow(insecure + "/")
	for _, tc := range []struct{ name, attrs, suite, module, noble string }{
		{"insecure-intl", fmt.Sprintf(`data-crypto="intl-pq" data-crypto-key=%q data-open="true"`, edKey), "INTL-PQ", web.CryptoIntlPath, "aesgcm,ed25519,sha256,x25519"},
		{"insecure-gm", fmt.Sprintf(`data-crypto="gm" data-crypto-key=%q data-open="true"`, sm2Key), "GM", web.CryptoGMPath, "sha256"},
	} {
		hosts.add(tc.name, origin, tc.attrs)
		v := chat(tc.name, insecure+"/page/"+tc.name, tc.suite, tc.module)
		got := evalJS[string](v, `(() => { const u = window.UnigateWidget.widget.client.secureInfo.used; return Object.keys(u).filter(k => u[k] === 'noble').sort().join(','); })()`)
		if ctx := evalJS[bool](v, `window.isSecureContext || !!(window.crypto && window.crypto.subtle)`); ctx || got != tc.noble {
			t.Errorf("%s: secure context %v, primitives on @noble %q, want an insecure context and %q", tc.name, ctx, got, tc.noble)
		}
		allSecure(tc.name)
	}
}

// agentTokenOf is agentToken for an agent of tenant.
func agentTokenOf(t *testing.T, g *gateway, id, tenant string) string {
	t.Helper()
	now := time.Now()
	tok, err := g.signer.Sign(token.Claims{Subject: id, Role: "agent", Tenant: tenant, IssuedAt: now, ExpiresAt: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// webQueueETA: the broker's wait estimate (Queue.eta_seconds) in the
// widget, in zh-CN and en. Agent a-eta (capacity 1) handles a first
// conversation for more than hold and closes it: the tenant's handling
// time is known (> hold) and one conversation is being handled (the
// second, which took the freed slot). A Chinese visitor
// then waits first in the queue (estimate: 1 × handling time), gorilla
// visitors queue behind it, and an English visitor waits at position
// wantPos, whose estimate (wantPos × handling time > wantPos × hold) is
// at least a minute. Each widget's banner is checked against the estimate
// its page received (its WebSocket frames), as the widget renders it:
// under a minute, or about m minutes (rounded).
func webQueueETA(t *testing.T, b *browser) {
	const hold = 2 * time.Second
	const wantPos = 31 // wantPos × hold ≥ 60 s
	g := startGateway(t)
	origin := b.allowGateway(g)
	agent := dialJSON(t, g.srv.Addr())
	agent.send(map[string]any{"hello": map[string]any{"token": agentToken(t, g, "a-eta")}})
	agent.next("welcome")
	agent.send(map[string]any{"presence": map[string]any{"status": "STATUS_ONLINE", "capacity": 1}})
	agent.next("presence")
	queue := func(text string) (*jsonClient, string) {
		t.Helper()
		v := dialJSON(t, g.srv.Addr())
		v.send(map[string]any{"hello": map[string]any{}})
		v.next("welcome")
		v.send(map[string]any{"open": map[string]any{"text": text}})
		return v, v.next("conversation")["conversationId"].(string)
	}
	assignedTo := func(conv string) {
		t.Helper()
		for {
			if c := agent.next("conversation"); c["conversationId"] == conv && c["state"] == "STATE_ASSIGNED" {
				return
			}
		}
	}
	_, first := queue("first")
	assignedTo(first)
	seenAssigned := time.Now()
	_, second := queue("second") // waits for the slot
	// The handling time: at least hold (the assignment came before the
	// test saw it, the close comes after).
	waitUntil(t, 2*hold, "the handling time", func() bool { return time.Since(seenAssigned) > hold })
	agent.send(map[string]any{"close": map[string]any{"conversationId": first, "reason": "resolved"}})
	assignedTo(second) // the freed slot: the agent is full again

	// etaOf returns the last wait estimate page p received for conv.
	etaOf := func(p *page, conv string) (pos, eta float64) {
		t.Helper()
		for _, f := range b.framesOf(p.name) {
			var env struct {
				Queue *struct {
					ConversationID string  `json:"conversationId"`
					Position       float64 `json:"position"`
					EtaSeconds     float64 `json:"etaSeconds"`
				} `json:"queue"`
			}
			if !f.Sent && json.Unmarshal([]byte(f.Data), &env) == nil && env.Queue != nil && env.Queue.ConversationID == conv {
				pos, eta = env.Queue.Position, env.Queue.EtaSeconds
			}
		}
		return pos, eta
	}
	// The widget's sentences (web/src/widget.js).
	type words struct{ next, queue, soon, about string }
	zh := words{"下一位就是您。", "您前面还有 {n} 位，正在排队。", "预计等待不到 1 分钟。", "预计等待约 {m} 分钟。"}
	en := words{"You are next in the queue.", "You are number {n} in the queue.", "Estimated wait: under a minute.", "Estimated wait: about {m} min."}
	// queued opens p's widget on /demo, asks, and checks the banner once
	// the page is queued at pos with an estimate: the banner is the
	// widget's rendering of the estimate the page received.
	queued := func(p *page, text string, pos int, w words) float64 {
		t.Helper()
		p.do("open /demo", chromedp.Navigate(origin+"/demo"))
		p.wait("widget connected", wBox+`.dataset.conn === 'online'`)
		p.do("open the widget", chromedp.Click(chromedp.JSPath(wRoot+`.querySelector('.launcher')`)))
		p.do("ask", chromedp.SendKeys(chromedp.JSPath(wRoot+`.querySelector('textarea')`), text+kb.Enter))
		p.wait("queued with an estimate", wBox+`.dataset.state === 'queued' && `+wBox+fmt.Sprintf(`.dataset.position === '%d'`, pos)+` && `+
			`window.UnigateWidget.widget.conv.eta > 0`)
		conv := evalJS[string](p, `window.UnigateWidget.widget.conv.id`)
		gotPos, eta := etaOf(p, conv)
		if int(gotPos) != pos || eta <= 0 {
			t.Fatalf("%s: the page received position %v, estimate %v s; want position %d and an estimate", p.name, gotPos, eta, pos)
		}
		want := w.next
		if pos != 1 {
			want = strings.ReplaceAll(w.queue, "{n}", fmt.Sprint(pos))
		}
		if eta < 60 {
			want += " " + w.soon
		} else {
			want += " " + strings.ReplaceAll(w.about, "{m}", fmt.Sprint(int(math.Round(eta/60))))
		}
		p.wait("the banner "+want, wRoot+`.querySelector('.banner').textContent === `+jsString(want))
		return eta
	}

	zhPage := b.pageAt(t, "eta-zh", origin)
	zhPage.chinese()
	etaFirst := queued(zhPage, "您好，我想咨询订单", 1, zh)
	if etaFirst < hold.Seconds() {
		t.Fatalf("first in the queue: estimate %v s, want more than the handling time's lower bound %v", etaFirst, hold)
	}
	for i := 2; i < wantPos; i++ {
		queue(fmt.Sprintf("waiting %d", i))
	}
	enPage := b.pageAt(t, "eta-en", origin)
	etaLast := queued(enPage, "Hello, where is my order?", wantPos, en)
	if etaLast < 60 {
		t.Fatalf("position %d: estimate %v s, want at least a minute (%d × more than %v)", wantPos, etaLast, wantPos, hold)
	}
	if !evalJS[bool](enPage, wRoot+`.querySelector('.banner').textContent.includes('Estimated wait: about ')`) {
		t.Fatal("the English banner does not say the wait in minutes")
	}
	t.Logf("estimates: %v s at position 1 (zh-CN), %v s at position %d (en)", etaFirst, etaLast, wantPos)
	enPage.screenshot(t.TempDir(), "widget-queue-eta.png")
}
