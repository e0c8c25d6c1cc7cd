package main

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/unigate/unigate/backends"
	"github.com/unigate/unigate/backends/sdk"
	"github.com/unigate/unigate/internal/config"
)

// testWebHookEnv makes this test binary serve the authentication hook of
// TestWeb/PasswordReload instead of running tests (go-plugin's re-exec
// pattern; see TestMain), so the gateway supervises a real plugin process.
const testWebHookEnv = "UGTEST_WEB_HOOK"

// testHookUser and testHookPassword are the one account of the test hook:
// an agent of the default tenant.
const (
	testHookUser     = "carol"
	testHookPassword = "correct horse battery staple"
)

type webTestHook struct{}

func (webTestHook) Authenticate(_ context.Context, c backends.Credentials) (backends.Identity, error) {
	if c.Username == testHookUser && c.Password == testHookPassword {
		return backends.Identity{OK: true, ID: testHookUser, Roles: []string{"agent"}, DisplayName: "Carol"}, nil
	}
	return backends.Identity{Reason: "invalid credentials"}, nil
}

func (webTestHook) Event(context.Context, backends.Event) error { return nil }

func serveWebTestHook() { sdk.ServeHook(webTestHook{}) }

// webPasswordReload: an agent signs in to the console with a user name and
// password, checked by the gateway's authentication hook (a real plugin
// process). A wrong password is refused with a sentence. After a reload
// the console resumes the session with its resume token alone: no
// password form, no password in the hello, the same agent with its
// conversation, which goes on. The password is in no storage of the page.
// After "Sign out" a reload asks again, with the user name filled in.
func webPasswordReload(t *testing.T, b *browser) {
	t.Setenv(testWebHookEnv, "1") // inherited by the hook plugin process
	g := startGateway(t, func(c *config.Config) { c.Backends.HookPlugin = os.Args[0] })
	origin := b.allowGateway(g)

	c := b.pageAt(t, "pw-agent", origin)
	c.do("open the console", chromedp.Navigate(origin+"/console/"))
	c.do("a wrong password", chromedp.SendKeys(chromedp.ID("username"), testHookUser), chromedp.SendKeys(chromedp.ID("password"), "guess"), chromedp.Click(chromedp.ID("signin")))
	c.wait("refused", `document.body.dataset.view === 'login' && document.getElementById('alert').textContent === 'Your sign-in is not valid.' && document.getElementById('username').value === 'carol'`)
	c.do("the right one", chromedp.SendKeys(chromedp.ID("password"), testHookPassword+kb.Enter))
	c.wait("signed in", `document.body.dataset.view === 'main' && document.body.dataset.conn === 'online' && document.getElementById('me').textContent === 'carol'`)
	c.do("go online",
		chromedp.SetValue(chromedp.ID("status"), "STATUS_ONLINE"),
		chromedp.Click(chromedp.CSS("#presence button[type=submit]")),
	)
	c.wait("presence online", `document.body.dataset.presence === 'online'`)

	v := b.pageAt(t, "pw-visitor", origin)
	v.do("open /demo", chromedp.Navigate(origin+"/demo"))
	v.wait("widget connected", wBox+`.dataset.conn === 'online'`)
	v.do("open the widget", chromedp.Click(chromedp.JSPath(wRoot+`.querySelector('.launcher')`)))
	first := "Hello, is an agent there?"
	v.do("visitor writes", chromedp.SendKeys(chromedp.JSPath(wRoot+`.querySelector('textarea')`), first+kb.Enter))
	v.wait("assigned", wBox+`.dataset.state === 'assigned'`)
	conv := evalJS[string](v, `window.UnigateWidget.widget.conv.id`)
	c.wait("the conversation", `document.body.dataset.selected === `+jsString(conv)+` && `+cHas(first))

	c.do("reload", chromedp.Reload())
	c.wait("resumed without asking", `document.body.dataset.view === 'main' && document.body.dataset.conn === 'online' && document.getElementById('me').textContent === 'carol' && `+cHas(first))
	afterReload := "Yes, still here after my reload."
	c.do("the agent answers", chromedp.SendKeys(chromedp.ID("input"), afterReload+kb.Enter))
	v.wait("the answer", wHas(afterReload))
	checkOnce(t, "visitor", widgetTranscript(v), []string{first, afterReload})

	// What crossed the WebSocket: three hellos (the refused one, the
	// sign-in, the reload), only the first two with the password; the
	// reload's welcome continues the session.
	var hellos []map[string]any
	for _, env := range sentEnvelopes(t, b, "pw-agent") {
		var h map[string]any
		if raw, ok := env["hello"]; ok && json.Unmarshal(raw, &h) == nil {
			hellos = append(hellos, h)
		}
	}
	if len(hellos) != 3 || hellos[0]["password"] != "guess" || hellos[1]["password"] != testHookPassword ||
		hellos[2]["password"] != nil || hellos[2]["username"] != nil || hellos[2]["resumeToken"] == nil || hellos[2]["token"] != nil {
		t.Fatalf("the console's hellos: %v, want the wrong password, the right one, then the resume token alone", hellos)
	}
	var welcomes []map[string]any
	for _, f := range b.framesOf("pw-agent") {
		var env struct{ Welcome map[string]any }
		if !f.Sent && json.Unmarshal([]byte(f.Data), &env) == nil && env.Welcome != nil {
			welcomes = append(welcomes, env.Welcome)
		}
	}
	if len(welcomes) != 2 || welcomes[1]["resumed"] != true || welcomes[1]["role"] != "ROLE_AGENT" || welcomes[1]["userId"] != "carol" || welcomes[1]["sessionId"] != welcomes[0]["sessionId"] {
		t.Fatalf("the console's welcomes: %v, want the reload's to resume the session", welcomes)
	}
	if stored := evalJS[string](c, `JSON.stringify(sessionStorage) + JSON.stringify(localStorage)`); strings.Contains(stored, "horse") || !strings.Contains(stored, "unigate.console.auth") {
		t.Fatalf("the console's storage: %s, want the password in none of it", stored)
	}

	// Signed out, a reload asks again, with the user name filled in.
	c.do("sign out", chromedp.Click(chromedp.ID("signout")))
	c.wait("the form", `document.body.dataset.view === 'login'`)
	c.do("reload", chromedp.Reload())
	c.wait("asks for the password", `document.body.dataset.view === 'login' && document.getElementById('username').value === 'carol' && document.activeElement === document.getElementById('password')`)
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
