package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/unigate/unigate/internal/config"
)

// chromiumPath finds Debian's chromium; the browser tests skip loudly
// without it, and fail under CI (.ci/run installs it).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("UNIGATE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is missing under CI (.ci/run installs Debian's chromium)")
	}
	t.Skip("SKIPPED LOUDLY: the browser tests need chromium (apt-get install chromium)")
	return ""
}

// browser is one headless Chromium process, with a fresh profile and the
// flags that keep it off the network; each page is its own browser context
// (separate storage, like two people on two machines).
type browser struct {
	t      *testing.T
	ctx    context.Context
	origin string // http://127.0.0.1:port of the gateway

	mu       sync.Mutex
	requests []string             // every URL any page asked for, WebSockets included
	problems []string             // console errors, exceptions, CSP violations
	frames   map[string][]wsFrame // WebSocket messages by page name
	expected []string             // console errors a test causes on purpose (substrings)
	allowed  []string             // URL prefixes pages may request: the gateways and host pages
}

// wsFrame is one WebSocket message a page sent or received.
type wsFrame struct {
	Sent bool
	Data string
}

func newBrowser(t *testing.T, origin string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("dns-prefetch-disable", true),
		chromedp.Flag("lang", "en-US"),
		// insecure.test is this machine under a name that is not a secure
		// context (no crypto.subtle): the secure channel's fallbacks.
		chromedp.Flag("host-resolver-rules", "MAP insecure.test 127.0.0.1"),
		chromedp.WindowSize(1280, 800),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		cancel()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	return &browser{t: t, ctx: ctx, origin: origin, frames: map[string][]wsFrame{}}
}

// allow adds URL prefixes (an origin and its WebSocket) pages may request.
func (b *browser) allow(prefixes ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.allowed = append(b.allowed, prefixes...)
}

// allowGateway allows a gateway's origin and WebSocket.
func (b *browser) allowGateway(g *gateway) string {
	origin := "http://" + g.srv.Addr()
	b.allow(origin+"/", "ws://"+g.srv.Addr()+"/")
	return origin
}

// expect lets console errors containing s pass (a refusal the test
// provokes is logged by the browser).
func (b *browser) expect(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.expected = append(b.expected, s)
}

// framesOf returns the WebSocket messages of a page so far.
func (b *browser) framesOf(name string) []wsFrame {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.frames[name])
}

// page opens a tab in a new browser context and records what it requests
// and every error it logs.
func (b *browser) page(t *testing.T, name string) *page {
	t.Helper()
	return b.pageAt(t, name, b.origin)
}

// pageAt is page for a gateway at origin (several gateways share the
// browser).
func (b *browser) pageAt(t *testing.T, name, origin string) *page {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext(), chromedp.WithListener(func(ev any) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch ev := ev.(type) {
		case *network.EventRequestWillBeSent:
			b.requests = append(b.requests, ev.Request.URL)
		case *network.EventWebSocketCreated:
			b.requests = append(b.requests, ev.URL)
		case *network.EventWebSocketFrameSent:
			b.frames[name] = append(b.frames[name], wsFrame{Sent: true, Data: string(ev.Response.PayloadData)})
		case *network.EventWebSocketFrameReceived:
			b.frames[name] = append(b.frames[name], wsFrame{Data: string(ev.Response.PayloadData)})
		case *runtime.EventExceptionThrown:
			b.problems = append(b.problems, name+": exception: "+ev.ExceptionDetails.Text+" "+describe(ev.ExceptionDetails.Exception))
		case *runtime.EventConsoleAPICalled:
			if ev.Type == "error" || ev.Type == "assert" {
				b.problems = append(b.problems, name+": console."+string(ev.Type))
			}
		case *cdplog.EventEntryAdded:
			// The test takes the visitor offline on purpose.
			if ev.Entry.Level == "error" && !strings.Contains(ev.Entry.Text, "ERR_INTERNET_DISCONNECTED") && !slices.ContainsFunc(b.expected, func(s string) bool { return strings.Contains(ev.Entry.Text, s) }) {
				b.problems = append(b.problems, name+": "+string(ev.Entry.Source)+": "+ev.Entry.Text+" "+ev.Entry.URL)
			}
		}
	}))
	t.Cleanup(cancel)
	if _, err := chromedp.Call(ctx, cdplog.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("%s: Log.enable: %v", name, err)
	}
	return &page{t: t, b: b, ctx: ctx, name: name, origin: origin, close: cancel}
}

func describe(o *runtime.RemoteObject) string {
	if o == nil {
		return ""
	}
	return o.Description
}

type page struct {
	t      *testing.T
	b      *browser
	ctx    context.Context
	name   string
	origin string // the gateway this page talks to
	close  func() // closes the tab (a visitor who leaves)
}

func (p *page) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.fail("%s: %v", what, err)
	}
}

func (p *page) fail(format string, args ...any) {
	p.t.Helper()
	shot := filepath.Join(p.t.TempDir(), p.name+"-failure.png")
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	if buf, err := chromedp.Run(ctx, chromedp.CaptureScreenshot()); err == nil {
		_ = os.WriteFile(shot, buf, 0o644)
	}
	dump, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`(() => { const w = document.getElementById('unigate-widget'); return (w ? w.shadowRoot.querySelector('.root').outerHTML : document.body.outerHTML).slice(0, 6000); })()`))
	p.t.Fatalf("%s: %s\nscreenshot: %s\nDOM: %s", p.name, fmt.Sprintf(format, args...), shot, dump)
}

// wait polls a JavaScript condition until it holds (20 s deadline).
func (p *page) wait(what, cond string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second))); err != nil {
		p.fail("waiting for %s (%s): %v", what, cond, err)
	}
}

func evalJS[T any](p *page, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.fail("eval %s: %v", expr, err)
	}
	return v
}

func (p *page) screenshot(dir, name string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.fail("screenshot: %v", err)
	}
	for _, d := range []string{dir, os.Getenv("UNIGATE_WEB_SCREENSHOTS")} {
		if d != "" {
			if err := os.WriteFile(filepath.Join(d, name), buf, 0o644); err != nil {
				p.t.Fatal(err)
			}
		}
	}
}

// Expressions reaching into the widget's shadow root.
const (
	wRoot = `document.getElementById('unigate-widget').shadowRoot`
	wBox  = wRoot + `.querySelector('.root')`
	wMsgs = `[...` + wRoot + `.querySelectorAll('.msg')]`
)

// wHas: the widget shows exactly one message with this text.
func wHas(text string) string {
	return fmt.Sprintf(`%s.filter(n => n.querySelector('.bubble').textContent === %q).length === 1`, wMsgs, text)
}

func cHas(text string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('#log .msg')].filter(n => n.querySelector('.bubble').textContent === %q).length === 1`, text)
}

// transcript is what a page shows: the message texts in order, with seqs.
type transcript struct {
	Texts []string `json:"texts"`
	Seqs  []string `json:"seqs"`
}

func widgetTranscript(p *page) transcript {
	return evalJS[transcript](p, `({texts: `+wMsgs+`.map(n => n.querySelector('.bubble').textContent), seqs: `+wMsgs+`.map(n => n.dataset.seq)})`)
}

func consoleTranscript(p *page) transcript {
	return evalJS[transcript](p, `(() => { const m = [...document.querySelectorAll('#log .msg')]; return {texts: m.map(n => n.querySelector('.bubble').textContent), seqs: m.map(n => n.dataset.seq)}; })()`)
}

// checkOnce: every message appears once, all stored (a seq), in seq order.
func checkOnce(t *testing.T, who string, tr transcript, want []string) {
	t.Helper()
	if !slices.Equal(tr.Texts, want) {
		t.Fatalf("%s shows %q, want %q", who, tr.Texts, want)
	}
	seen := map[string]bool{}
	prev := 0
	for i, s := range tr.Seqs {
		var n int
		if _, err := fmt.Sscan(s, &n); err != nil || seen[s] || n <= prev {
			t.Fatalf("%s: message %d (%q) has seq %q after %d (seqs %v)", who, i, tr.Texts[i], s, prev, tr.Seqs)
		}
		seen[s] = true
		prev = n
	}
}

// postAPI posts a bot or system message through the integrator API, the
// way a bot backend will.
func postAPI(t *testing.T, origin, key, conv, sender, text string) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"text": text, "sender": sender, "client_msg_id": sender + "-" + fmt.Sprint(len(text))})
	req, _ := http.NewRequest("POST", origin+"/api/v1/conversations/"+url.PathEscape(conv)+"/messages", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("post %s message: %d", sender, resp.StatusCode)
	}
}

// legacy Network.emulateNetworkConditions: it takes the page offline,
// WebSockets included, and sets navigator.onLine.
type netConditions struct {
	Offline            bool    `json:"offline"`
	Latency            float64 `json:"latency"`
	DownloadThroughput float64 `json:"downloadThroughput"`
	UploadThroughput   float64 `json:"uploadThroughput"`
}

var emulateNetworkConditions = cdp.Command[netConditions, cdp.Empty]{Method: "Network.emulateNetworkConditions"}

func (p *page) offline(off bool) {
	p.t.Helper()
	if _, err := chromedp.Call(p.ctx, emulateNetworkConditions, netConditions{Offline: off, DownloadThroughput: -1, UploadThroughput: -1}); err != nil {
		p.fail("offline=%v: %v", off, err)
	}
}

// chinese makes the page's browser language zh-CN (navigator.language and
// Accept-Language), as for a visitor with a Chinese browser.
func (p *page) chinese() {
	p.t.Helper()
	ua := evalJS[string](p, `navigator.userAgent`)
	if _, err := chromedp.Call(p.ctx, emulation.SetUserAgentOverride, emulation.SetUserAgentOverrideParams{UserAgent: ua, AcceptLanguage: "zh-CN,zh"}); err != nil {
		p.fail("language override: %v", err)
	}
}

func (p *page) consoleLogin(token string) {
	p.t.Helper()
	p.do("open the console", chromedp.Navigate(p.origin+"/console/"))
	p.do("sign in",
		chromedp.SendKeys(chromedp.ID("token"), token),
		chromedp.Click(chromedp.ID("signin")),
	)
	p.wait("console connected", `document.body.dataset.conn === 'online' && document.getElementById('me').textContent !== ''`)
	p.do("go online",
		chromedp.SetValue(chromedp.ID("status"), "STATUS_ONLINE"),
		chromedp.SetValue(chromedp.ID("capacity"), "3"),
		chromedp.Click(chromedp.CSS("#presence button[type=submit]")),
	)
	p.wait("presence online", `document.body.dataset.presence === 'online'`)
}

// TestWeb runs the widget and the console in one headless Chromium (each
// page in its own browser context) against a real gateway. No page may
// ask anything of another origin, log an error or break the CSP.
func TestWeb(t *testing.T) {
	chromiumPath(t) // skip (or fail under CI) before starting anything
	const apiKey = "web-test-key-0000000000001"
	g := startGateway(t, func(c *config.Config) {
		c.API.Keys = config.APIKeys{{Key: apiKey, Tenant: "default", Scopes: []string{"read", "write"}}}
		c.Web.CannedReplies = []string{cannedFromConfig, "您好，我是客服{me}，很高兴为您服务。"}
	})
	b := newBrowser(t, "http://"+g.srv.Addr())
	b.allowGateway(g)
	// Pages of other sites that embed the widget (cross-origin, strict CSP).
	hosts := newHostPages(t)
	b.allow(hosts.URL + "/")
	t.Run("KeyboardChinese", func(t *testing.T) { webKeyboardChinese(t, b) })
	t.Run("HumanButtonContext", func(t *testing.T) { webHumanButton(t, b, hosts) })
	t.Run("BotFirst", func(t *testing.T) { webBotFirst(t, b, hosts) })
	t.Run("QueueETA", func(t *testing.T) { webQueueETA(t, b) })
	t.Run("Conversation", func(t *testing.T) { webConversation(t, g, b, apiKey) })
	t.Run("Refusals", func(t *testing.T) { webRefusals(t, b, hosts) })
	t.Run("PasswordReload", func(t *testing.T) { webPasswordReload(t, b) })
	t.Run("Secure", func(t *testing.T) { webSecure(t, b, hosts) })

	b.mu.Lock()
	defer b.mu.Unlock()
	allowed := b.allowed
	for _, u := range b.requests {
		if !slices.ContainsFunc(allowed, func(a string) bool { return strings.HasPrefix(u, a) }) {
			t.Errorf("a page requested %s, outside %v", u, allowed)
		}
	}
	if len(b.requests) == 0 {
		t.Error("no requests recorded")
	}
	for _, pr := range b.problems {
		t.Errorf("browser: %s", pr)
	}
	t.Logf("%d requests, all to %v", len(b.requests), allowed)
}

// webKeyboardChinese: in a zh-CN browser the widget and the console speak
// Chinese; the widget opens and closes from the keyboard, focus goes to
// the input and back to the launcher, and the labels screen readers need
// are there.
func webKeyboardChinese(t *testing.T, b *browser) {
	p := b.page(t, "zh-visitor")
	p.chinese()
	p.do("open /demo", chromedp.Navigate(b.origin+"/demo"))
	p.wait("widget connected", wBox+`.dataset.conn === 'online'`)
	launcher := chromedp.JSPath(wRoot + `.querySelector('.launcher')`)
	p.wait("Chinese labels", wRoot+`.querySelector('.launcher').getAttribute('aria-label') === '打开聊天' && `+wBox+`.lang === 'zh-CN'`)
	p.do("open with Enter", chromedp.Focus(launcher), chromedp.KeyEvent(kb.Enter))
	p.wait("open, input focused", wBox+`.dataset.open === 'true' && `+wRoot+`.activeElement === `+wRoot+`.querySelector('textarea') && `+
		wRoot+`.querySelector('.launcher').getAttribute('aria-expanded') === 'true'`)
	p.wait("accessible names", wRoot+`.querySelector('textarea').getAttribute('aria-label') === '输入消息' && `+
		wRoot+`.querySelector('.log').getAttribute('role') === 'log' && `+wRoot+`.querySelector('.log').getAttribute('aria-live') === 'polite' && `+
		wRoot+`.querySelector('.panel').getAttribute('role') === 'dialog' && `+wRoot+`.querySelector('.note').textContent.includes('您好')`)
	p.do("close with Escape", chromedp.KeyEvent(kb.Escape))
	p.wait("closed, focus on the launcher", wBox+`.dataset.open === 'false' && `+wRoot+`.activeElement === `+wRoot+`.querySelector('.launcher')`)

	c := b.page(t, "zh-console")
	c.chinese()
	c.do("open the console", chromedp.Navigate(b.origin+"/console/"))
	c.wait("Chinese console", `document.documentElement.lang === 'zh-CN' && document.getElementById('signin').textContent === '登录' && document.activeElement === document.getElementById('token')`)
	// A bad token: refused for good (no retry loop), said in a sentence,
	// back to the sign-in form.
	c.do("sign in with a bad token", chromedp.SendKeys(chromedp.ID("token"), "not-a-token"), chromedp.Click(chromedp.ID("signin")))
	c.wait("refusal shown", `document.body.dataset.view === 'login' && document.getElementById('alert').textContent === '登录凭证无效。'`)
}

// webConversation: a visitor on /demo and two agents on /console/ hold a
// whole conversation: queue position, bot answer and hand-off notice,
// agent reply, typing, read receipts both ways, a reload and a dropped
// network on the visitor's side (nothing lost, nothing shown twice),
// transfer to the second agent with the history, close with a disposition.
func webConversation(t *testing.T, g *gateway, b *browser, apiKey string) {
	origin := b.origin
	shots := t.TempDir()

	// The visitor opens the demo page and the widget, and writes.
	v := b.page(t, "visitor")
	v.do("open /demo", chromedp.Navigate(origin+"/demo"))
	v.wait("widget connected", wBox+`.dataset.conn === 'online'`)
	v.do("open the widget", chromedp.Click(chromedp.JSPath(wRoot+`.querySelector('.launcher')`)))
	v.wait("panel open", wBox+`.dataset.open === 'true' && `+wRoot+`.activeElement === `+wRoot+`.querySelector('textarea')`)
	first := "Hello, my order #1024 has not arrived"
	v.do("type", chromedp.SendKeys(chromedp.JSPath(wRoot+`.querySelector('textarea')`), first+kb.Enter))
	// No agent is online yet: the broker says so (no_agent_online) and the
	// widget offers leave-a-message instead of the "you are next" banner.
	v.wait("queued at position 1, leave a message", wBox+`.dataset.state === 'queued' && `+wBox+`.dataset.position === '1' && `+wBox+`.dataset.leave === 'true'`)
	v.wait("first message stored", wMsgs+`.length === 1 && `+wMsgs+`[0].dataset.seq === '1'`)
	conv := evalJS[string](v, `window.UnigateWidget.widget.conv.id`)

	// A bot answer and a hand-off notice, posted as a bot backend would.
	bot := "I am the virtual assistant. Orders usually ship within 2 days."
	handoff := "Handing you over to a human agent."
	postAPI(t, origin, apiKey, conv, "bot", bot)
	postAPI(t, origin, apiKey, conv, "system", handoff)
	v.wait("bot and system messages", wHas(bot)+` && `+wHas(handoff)+` && `+wRoot+`.querySelector('.msg.bot') && `+wRoot+`.querySelector('.msg.system')`)
	v.wait("the bot's answer is labelled", wRoot+`.querySelector('.msg.bot .who').textContent === 'AssistantBot' && `+wRoot+`.querySelector('.msg.bot .tag').textContent === 'Bot' && `+wRoot+`.querySelector('.msg.bot').dataset.role === 'bot'`)

	// Agent a1 signs in, goes online and gets the conversation with its
	// history.
	a1 := b.page(t, "agent-a1")
	a1.consoleLogin(agentToken(t, g, "a1"))
	a1.wait("assignment", fmt.Sprintf(`document.querySelector('li[data-conv=%q][data-mine=true]') && document.body.dataset.selected === %q`, conv, conv))
	a1.wait("history", cHas(first)+` && `+cHas(bot)+` && `+cHas(handoff))
	v.wait("assigned", wBox+`.dataset.state === 'assigned' && [...`+wRoot+`.querySelectorAll('.note')].some(n => n.textContent.includes('a1'))`)

	// Typing shows on the other side; the reply arrives; the visitor reads
	// it (the panel is open) and the agent sees the receipt.
	a1.do("agent types", chromedp.SendKeys(chromedp.ID("input"), "Let me check"))
	v.wait("typing indicator", wBox+`.dataset.typing === 'on'`)
	reply := "Let me check that for you."
	a1.do("agent sends", chromedp.SendKeys(chromedp.ID("input"), strings.TrimPrefix(reply, "Let me check")+kb.Enter))
	v.wait("agent reply", wHas(reply))
	a1.wait("read receipt at the agent", `document.querySelector('#log .msg.mine').dataset.status === 'read'`)

	// A canned reply from the configuration (web.canned_replies), offered
	// next to the built-in ones.
	a1.wait("canned replies from the config", fmt.Sprintf(`[...document.querySelectorAll('#canned optgroup[data-source=server] option')].some(o => o.value === %q) && document.querySelector('#canned optgroup[data-source=builtin] option')`, cannedFromConfig))
	evalJS[bool](a1, fmt.Sprintf(`(() => { const s = document.getElementById('canned'); s.value = %q; s.dispatchEvent(new Event('change')); return true; })()`, cannedFromConfig))
	a1.wait("canned reply in the input", fmt.Sprintf(`document.getElementById('input').value === %q`, cannedFromConfig))
	a1.do("send the canned reply", chromedp.Click(chromedp.ID("send")))
	v.wait("canned reply at the visitor", wHas(cannedFromConfig))
	thanks := "Thank you!"
	v.do("visitor answers", chromedp.SendKeys(chromedp.JSPath(wRoot+`.querySelector('textarea')`), thanks+kb.Enter))
	a1.wait("visitor message", cHas(thanks))
	v.wait("read receipt at the visitor", wMsgs+`.filter(n => n.classList.contains('mine')).every(n => n.dataset.status === 'read')`)
	v.screenshot(shots, "widget.png")

	// A reload in the middle: the same conversation, each message once.
	want := []string{first, bot, handoff, reply, cannedFromConfig, thanks}
	v.do("reload", chromedp.Reload())
	v.wait("resumed after reload", wBox+`.dataset.conn === 'online' && `+wBox+`.dataset.state === 'assigned' && `+wBox+`.dataset.open === 'true'`)
	afterReload := "Are you still there after my reload?"
	a1.do("agent sends after reload", chromedp.SendKeys(chromedp.ID("input"), afterReload+kb.Enter))
	v.wait("message after reload", wHas(afterReload))
	want = append(want, afterReload)
	checkOnce(t, "visitor after reload", widgetTranscript(v), want)
	if n := evalJS[int](v, `window.UnigateWidget.widget.client.stats.dials`); n != 1 {
		t.Errorf("visitor dialled %d times since the reload, want 1", n)
	}

	// The network drops: a message written while offline and one the
	// agent sends meanwhile both arrive once when it is back.
	v.offline(true)
	v.wait("connection lost", wBox+`.dataset.conn !== 'online'`)
	offlineText := "I wrote this while offline"
	v.do("visitor writes offline", chromedp.SendKeys(chromedp.JSPath(wRoot+`.querySelector('textarea')`), offlineText+kb.Enter))
	v.wait("pending while offline", wMsgs+`.some(n => n.dataset.status === 'pending')`)
	duringDrop := "Sent while your network was down."
	a1.do("agent sends during the drop", chromedp.SendKeys(chromedp.ID("input"), duringDrop+kb.Enter))
	a1.wait("agent message stored", fmt.Sprintf(`[...document.querySelectorAll('#log .msg.mine')].some(n => n.querySelector('.bubble').textContent === %q && n.dataset.seq !== '')`, duringDrop))
	v.offline(false)
	v.wait("reconnected", wBox+`.dataset.conn === 'online'`)
	v.wait("missed message replayed", wHas(duringDrop))
	v.wait("offline message sent", wMsgs+`.every(n => n.dataset.status !== 'pending')`)
	a1.wait("offline message at the agent", cHas(offlineText))
	want = append(want, duringDrop, offlineText)
	checkOnce(t, "visitor after the drop", widgetTranscript(v), want)
	checkOnce(t, "agent a1", consoleTranscript(a1), want)
	if s := evalJS[map[string]int](v, `window.UnigateWidget.widget.client.stats`); s["reconnects"] < 1 {
		t.Errorf("visitor client stats %v: no reconnect", s)
	}

	// Transfer to a2, who gets the whole history.
	a2 := b.page(t, "agent-a2")
	a2.consoleLogin(agentToken(t, g, "a2"))
	a1.do("transfer", chromedp.SendKeys(chromedp.ID("target"), "a2"), chromedp.SendKeys(chromedp.ID("tnote"), "VIP, order 1024"), chromedp.Click(chromedp.ID("do-transfer")))
	a2.wait("transferred conversation", fmt.Sprintf(`document.querySelector('li[data-conv=%q][data-mine=true]') && document.body.dataset.selected === %q`, conv, conv))
	a1.wait("gone from a1", fmt.Sprintf(`document.querySelector('#done li[data-conv=%q][data-mine=false]')`, conv))
	a2.wait("history at a2", cHas(offlineText))
	checkOnce(t, "agent a2", consoleTranscript(a2), want)
	v.wait("transfer notice", wBox+`.dataset.state === 'transferred' && [...`+wRoot+`.querySelectorAll('.note')].some(n => n.textContent.includes('a2'))`)
	takeOver := "Hi, I am taking over your case."
	a2.do("a2 replies", chromedp.SendKeys(chromedp.ID("input"), takeOver+kb.Enter))
	v.wait("a2 reply", wHas(takeOver))
	a2.wait("read by the visitor", `[...document.querySelectorAll('#log .msg.mine')].every(n => n.dataset.status === 'read')`)
	a2.screenshot(shots, "console.png")

	// a2 closes with a disposition; everybody sees it.
	a2.do("close", chromedp.SetValue(chromedp.ID("disposition"), "resolved"), chromedp.SendKeys(chromedp.ID("cnote"), "re-shipped"), chromedp.Click(chromedp.ID("do-close")))
	v.wait("closed at the visitor", wBox+`.dataset.state === 'closed' && [...`+wRoot+`.querySelectorAll('.note')].some(n => n.textContent.includes('resolved: re-shipped'))`)
	a2.wait("closed at a2", fmt.Sprintf(`document.querySelector('#done li[data-conv=%q][data-state=STATE_CLOSED]')`, conv))
	want = append(want, takeOver)
	checkOnce(t, "visitor at the end", widgetTranscript(v), want)
	t.Logf("screenshots in %s", shots)
}
