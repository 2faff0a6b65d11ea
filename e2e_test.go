package pliro

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// End-to-end tests against a real OpenID Provider that nobody here wrote:
// the npm package oidc-provider, configured like Pliro (testenv/pliro). It
// needs Node and `npm ci` in testenv/pliro (scripts/setup does both); in CI
// a missing piece fails the test instead of skipping it.

type standin struct {
	issuer string
	port   int
}

// requireTool skips a test that needs something not installed here, but
// fails it in CI, where scripts/setup must have installed it.
func requireTool(t *testing.T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is missing: scripts/setup installs it", what)
	}
	t.Skipf("%s is missing: run scripts/setup", what)
}

// startStandin runs the stand-in for a site at sitePort, with extra env.
func startStandin(t *testing.T, sitePort int, env ...string) *standin {
	t.Helper()
	node, err := exec.LookPath("node")
	requireTool(t, err == nil, "node")
	_, err = os.Stat("testenv/pliro/node_modules/oidc-provider")
	requireTool(t, err == nil, "testenv/pliro/node_modules (npm ci)")

	s := &standin{port: freePort(t)}
	s.issuer = fmt.Sprintf("http://127.0.0.1:%d", s.port)
	site := fmt.Sprintf("http://localhost:%d", sitePort)
	cmd := exec.Command(node, "server.js")
	cmd.Dir = "testenv/pliro"
	cmd.Env = append(os.Environ(),
		fmt.Sprintf("PORT=%d", s.port),
		"ISSUER="+s.issuer,
		"CLIENT_ID=news-example",
		"CLIENT_SECRET="+testClientSecret,
		"REDIRECT_URIS="+site+"/callback",
		"POST_LOGOUT_REDIRECT_URIS="+site+"/",
		"BACKCHANNEL_LOGOUT_URI="+site+"/backchannel-logout",
		fmt.Sprintf("CONTINUE_HOSTS=localhost:%d", sitePort),
		"TEST_API=1",
	)
	cmd.Env = append(cmd.Env, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "pliro-standin ready") {
				ready <- true
				return
			}
		}
		ready <- false
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("stand-in exited: %s", stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("stand-in not ready after 20s: %s", stderr.String())
	}
	return s
}

// e2eSite starts Caddy in front of the stand-in; the stand-in must know the
// site's port first, so the port is chosen here.
func e2eSite(t *testing.T, extra string, env ...string) (*testSite, *standin) {
	t.Helper()
	port := freePort(t)
	sa := startStandin(t, port, env...)
	body := fmt.Sprintf(`
	pliro {
		issuer %s
		client_id news-example
		client_secret {env.PLIRO_TEST_SECRET}
		%s
	}
	pliro_require /members/*
	pliro_require /premium/* {
		plan premium
		subscribe_url %s/offers/premium/subscribe redirect
	}
	respond /members/* "members: {http.auth.user.id} {http.auth.user.name} plan={http.auth.user.plan} sid={http.auth.user.sid}"
	respond /premium/* "premium: {http.auth.user.name}"
	respond "public: [{http.auth.user.id}]"
`, sa.issuer, extra, sa.issuer)
	site := &testSite{t: t, port: port, base: fmt.Sprintf("http://localhost:%d", port), logFile: filepath.Join(t.TempDir(), "caddy.log")}
	site.load(body)
	t.Cleanup(func() { _ = caddy.Stop() })
	return site, sa
}

var formAction = regexp.MustCompile(`action="([^"]+)"`)

// navigateSigningIn opens a URL and, when the stand-in's login form shows
// up, signs in as the customer, then follows the redirects to the end.
func navigateSigningIn(t *testing.T, b *browser, rawURL, email, password string) *response {
	t.Helper()
	resp, visited := b.navigate(rawURL)
	if !strings.Contains(resp.Request.URL.Path, "/interaction/") {
		return resp
	}
	m := formAction.FindStringSubmatch(resp.body)
	if m == nil {
		t.Fatalf("no login form at %s (visited %v): %s", resp.Request.URL, visited, resp.body)
	}
	action, _ := resp.Request.URL.Parse(m[1])
	posted := b.postForm(action.String(), url.Values{"email": {email}, "password": {password}}, "")
	if posted.StatusCode != http.StatusSeeOther && posted.StatusCode != http.StatusFound {
		t.Fatalf("login POST: %d %s", posted.StatusCode, posted.body)
	}
	next, _ := posted.Request.URL.Parse(posted.Header.Get("Location"))
	final, _ := b.navigate(next.String())
	return final
}

func standinJSON(t *testing.T, method, u string, body any, out any) {
	t.Helper()
	var buf bytes.Buffer
	if body != nil {
		_ = json.NewEncoder(&buf).Encode(body)
	}
	req, _ := http.NewRequest(method, u, &buf)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: %s", method, u, resp.Status)
	}
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
}

func TestE2ESignInWithRealProvider(t *testing.T) {
	site, _ := e2eSite(t, "")
	b := newBrowser(t)
	resp := navigateSigningIn(t, b, site.base+"/members/a?x=1", "premium@example.com", "premium")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.body, "members: cus_1BxEm4QKh4Rb5v6Qvu2THx Paul Premium plan=premium sid=") || strings.HasSuffix(resp.body, "sid=") {
		t.Fatalf("got %d %q", resp.StatusCode, resp.body)
	}
	if resp.Request.URL.RequestURI() != "/members/a?x=1" {
		t.Fatalf("landed on %s", resp.Request.URL)
	}
	if got := b.get(site.base + "/premium/1").body; got != "premium: Paul Premium" {
		t.Fatalf("premium page: %q", got)
	}
}

// TestE2EPinnedKeyWithoutDiscovery: Pliro's own example pins the public key
// and uses the fixed /oauth/... layout; so can the module.
func TestE2EPinnedKeyWithoutDiscovery(t *testing.T) {
	pem := filepath.Join(t.TempDir(), "pliro.pem")
	site, _ := e2eSite(t, "public_key_file "+pem, "PUBLIC_KEY_OUT="+pem, "PKCE=off")
	b := newBrowser(t)
	resp := navigateSigningIn(t, b, site.base+"/members/a", "reader@example.com", "reader")
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.body, "Rita Reader plan= sid=") {
		t.Fatalf("got %d %q", resp.StatusCode, resp.body)
	}
}

// TestE2EProviderSignOutNotifiesCaddy: the customer signs out on Pliro's
// account page; Pliro sends the back-channel notification; the next request
// with the old cookie is anonymous.
func TestE2EProviderSignOutNotifiesCaddy(t *testing.T) {
	site, sa := e2eSite(t, "")
	b := newBrowser(t)
	navigateSigningIn(t, b, site.base+"/members/a", "premium@example.com", "premium")
	if resp := b.postForm(sa.issuer+"/account/sign-out", nil, sa.issuer); resp.StatusCode >= 400 {
		t.Fatalf("account sign-out: %d %s", resp.StatusCode, resp.body)
	}
	var log []struct {
		Target string `json:"target"`
		Status int    `json:"status"`
	}
	standinJSON(t, http.MethodGet, sa.issuer+"/test/backchannel-log", nil, &log)
	if len(log) == 0 || log[len(log)-1].Status != http.StatusOK || !strings.HasSuffix(log[len(log)-1].Target, "/backchannel-logout") {
		t.Fatalf("back-channel deliveries: %+v", log)
	}
	if got := b.get(site.base + "/").body; got != "public: []" {
		t.Fatalf("after the provider's sign-out: %q", got)
	}
}

// TestE2ESiteSignOutEndsProviderSession: the site's sign-out button ends the
// local session and continues to Pliro's end_session, which ends Pliro's
// session: a later prompt=none attempt gets login_required.
func TestE2ESiteSignOutEndsProviderSession(t *testing.T) {
	site, sa := e2eSite(t, "")
	b := newBrowser(t)
	navigateSigningIn(t, b, site.base+"/members/a", "premium@example.com", "premium")
	out := b.postForm(site.base+"/sign-out", nil, site.base)
	if out.StatusCode != http.StatusSeeOther || !strings.HasPrefix(out.Header.Get("Location"), sa.issuer+"/oauth/end_session?") {
		t.Fatalf("sign-out: %d to %q", out.StatusCode, out.Header.Get("Location"))
	}
	final, visited := b.navigate(out.Header.Get("Location"))
	if final.Request.URL.String() != site.base+"/" || final.body != "public: []" {
		t.Fatalf("after end_session: %s %q via %v", final.Request.URL, final.body, visited)
	}
	silent := url.Values{
		"client_id": {"news-example"}, "response_type": {"code"}, "scope": {"openid"},
		"redirect_uri": {site.base + "/callback"}, "state": {"s"}, "nonce": {"n"}, "prompt": {"none"},
	}
	resp := b.get(sa.issuer + "/oauth/authorize?" + silent.Encode())
	if loc := resp.Header.Get("Location"); !strings.Contains(loc, "error=login_required") {
		t.Fatalf("prompt=none after sign-out: %d to %q", resp.StatusCode, loc)
	}
}

// TestE2EPlanBoughtAtProvider: a reader without a plan is sent to Pliro's
// offer page; the plan is bought there; the continue_url brings them back
// to the article, which opens at once.
func TestE2EPlanBoughtAtProvider(t *testing.T) {
	site, sa := e2eSite(t, "")
	b := newBrowser(t)
	navigateSigningIn(t, b, site.base+"/members/a", "reader@example.com", "reader")
	denied := b.get(site.base + "/premium/7")
	to, _ := url.Parse(denied.Header.Get("Location"))
	if denied.StatusCode != http.StatusSeeOther || to.Path != "/offers/premium/subscribe" {
		t.Fatalf("denied: %d to %s", denied.StatusCode, to)
	}
	continueURL := to.Query().Get("continue_url")
	bought := b.postForm(to.String(), nil, sa.issuer)
	if bought.StatusCode != http.StatusSeeOther || bought.Header.Get("Location") != continueURL {
		t.Fatalf("subscribe at the provider: %d to %q, want %q", bought.StatusCode, bought.Header.Get("Location"), continueURL)
	}
	final, visited := b.navigate(continueURL)
	if final.StatusCode != http.StatusOK || final.body != "premium: Rita Reader" || final.Request.URL.RequestURI() != "/premium/7" {
		t.Fatalf("back from checkout: %d %q at %s via %v", final.StatusCode, final.body, final.Request.URL, visited)
	}
}

// TestE2ESilentReauthentication: reauth_interval passes; the next
// navigation goes to Pliro with prompt=none and comes back signed in,
// without a login form. Once Pliro's session is gone, the same check signs
// the customer out of the site.
func TestE2ESilentReauthentication(t *testing.T) {
	site, sa := e2eSite(t, "reauth_interval 1m", "BACKCHANNEL_LOGOUT_URI=")
	b := newBrowser(t)
	navigateSigningIn(t, b, site.base+"/members/a", "premium@example.com", "premium")
	restore := moveClock(t, 90*time.Second)
	resp, visited := b.navigate(site.base + "/news")
	if resp.body != "public: ["+testSubject+"]" || len(visited) < 3 {
		t.Fatalf("silent re-authentication: %q via %v", resp.body, visited)
	}
	restore()

	// Pliro's session ends (no back-channel registered in this variant).
	b.postForm(sa.issuer+"/account/sign-out", nil, sa.issuer)
	moveClock(t, 3*time.Minute)
	resp, visited = b.navigate(site.base + "/news")
	if resp.body != "public: []" {
		t.Fatalf("after Pliro's session ended: %q via %v", resp.body, visited)
	}
}
