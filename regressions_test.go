package pliro

// Regression tests for the findings of a security review: each test failed
// before its fix.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"io/fs"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// Two publications (two Pliro issuers, two client IDs) on one Redis with
// the default key_prefix: a session from publication A opens publication B.
func TestRedisSessionOfAnotherPublicationIsRefused(t *testing.T) {
	redis := startTestRedis(t)
	pA := newTestProvider(t) // the attacker's cheap/own publication: premium there
	pB := newTestProvider(t) // the victim publication
	pB.clientID = "other-client"
	pB.set(func(p *testProvider) { p.customer["plan"] = "none"; p.customer["plan_slugs"] = []string{} })
	ports := []int{freePort(t), freePort(t)}
	body := func(p *testProvider) string {
		return fmt.Sprintf(`
	pliro {
		issuer %s
		client_id %s
		client_secret {env.PLIRO_TEST_SECRET}
		store redis %s
	}
	pliro_require /premium/* plan premium
	respond /premium/* "premium: {http.auth.user.id} via issuer-less session"
	respond "public: [{http.auth.user.id}]"
`, p.issuer, p.clientID, redis.addr)
	}
	sites := startCaddySites(t, ports, body(pA), body(pB))
	a, b := sites[0], sites[1]
	br := newBrowser(t)
	signIn(t, a, br, "/premium/1")
	cookie := br.cookie(a.base, "pliro_session")

	// A fresh client with only that cookie value, at publication B.
	req, _ := http.NewRequest(http.MethodGet, b.base+"/premium/secret", nil)
	req.AddCookie(&http.Cookie{Name: "pliro_session", Value: cookie})
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	t.Logf("publication B /premium/secret with A's cookie: %d", resp.StatusCode)
	if resp.StatusCode == http.StatusOK {
		t.Errorf("a session issued by %s (client %s) was accepted by the site of %s (client %s)", pA.issuer, pA.clientID, pB.issuer, pB.clientID)
	}
}

type flakyDeleteStore struct {
	Store
	fail int
}

func (s *flakyDeleteStore) DeleteByProviderSID(ctx context.Context, sid, sub string) (int, error) {
	if s.fail > 0 {
		s.fail--
		return 0, errors.New("redis: i/o timeout")
	}
	return s.Store.DeleteByProviderSID(ctx, sid, sub)
}

// The OP is told "400: logout failed"; when it (or an operator) retries the
// very same logout token, it is refused as a replay and the session lives on.
func TestFailedBackchannelLogoutCanBeRetried(t *testing.T) {
	h, key := fuzzHandler(t)
	inner := h.store
	h.store = &flakyDeleteStore{Store: inner, fail: 1}
	_, skey := newSessionID()
	t0 := now()
	s := &Session{Subject: testSubject, ProviderSID: testProviderSID, Created: t0, LastSeen: t0}
	if err := inner.Save(context.Background(), skey, s, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	token := signES256With(key, map[string]any{"alg": "ES256", "typ": "logout+jwt"}, map[string]any{
		"iss": fuzzIssuer, "aud": testClientID, "iat": time.Now().Unix(), "jti": "j-1",
		"sub": testSubject, "sid": testProviderSID,
		"events": map[string]any{backchannelLogoutEvent: map[string]any{}},
	})
	post := func() int {
		r := httptest.NewRequest(http.MethodPost, "/backchannel-logout", strings.NewReader(url.Values{"logout_token": {token}}.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		_ = h.serveBackchannelLogout(w, r)
		t.Logf("%d %s", w.Code, strings.TrimSpace(w.Body.String()))
		return w.Code
	}
	post()
	second := post()
	_, found, _ := inner.Load(context.Background(), skey)
	if second != http.StatusOK || found {
		t.Errorf("retry of a logout that failed: %d, session still alive: %v", second, found)
	}
}

// A browser that does not keep cookies (privacy mode / headless preview
// bot sending Fetch Metadata) never sees the public page with auto_sign_in.
func TestAutoSignInSkipsBrowsersWithoutCookies(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, paywallSite(p, "auto_sign_in 1h"))
	p.set(func(p *testProvider) { p.signedIn = false })
	b := newBrowser(t)
	b.client.Jar = nil // no cookies kept
	resp, visited := b.navigate(site.base + "/news")
	t.Logf("cookie-less visitor: %d %q via %v", resp.StatusCode, resp.body, visited)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("public page answered %d to a cookie-less browser", resp.StatusCode)
	}
}

// The token endpoint fails during an auto sign-in: the visitor asked for a
// public page and gets a 502 instead of the page.
func TestFailedSilentSignInServesThePage(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, paywallSite(p, "auto_sign_in 1h"))
	p.tokenEndpoint = func(w http.ResponseWriter, r *http.Request) { http.Error(w, "oops", 500) }
	jar, _ := cookiejar.New(nil)
	b := newBrowser(t)
	b.client.Jar, b.jar = jar, jar
	resp, visited := b.navigate(site.base + "/news")
	t.Logf("visitor: %d via %v", resp.StatusCode, visited)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("public page answered %d because the silent sign-in failed", resp.StatusCode)
	}
}

// flakyStorage fails the first Load (storage briefly unreachable at start).
type flakyStorage struct {
	*certmagic.FileStorage
	failLoads int
}

func (s *flakyStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if s.failLoads > 0 {
		s.failLoads--
		return nil, errors.New("storage timeout")
	}
	return s.FileStorage.Load(ctx, key)
}

func TestSnapshotSurvivesATransientReadError(t *testing.T) {
	fsStore := &certmagic.FileStorage{Path: t.TempDir()}
	// Yesterday's snapshot with 3 live sessions.
	m1 := newMemoryStoreWith(&persistence{storage: fsStore, key: "s.json", logger: zap.NewNop()})
	t0 := now()
	for i := range 3 {
		_, k := newSessionID()
		_ = m1.Save(context.Background(), k, &Session{Subject: "cus_" + string(rune('a'+i)), Created: t0, LastSeen: t0}, t0.Add(time.Hour))
	}
	if err := m1.Destruct(); err != nil {
		t.Fatal(err)
	}
	// Restart: storage hiccups on the first read.
	m2 := newMemoryStoreWith(&persistence{storage: &flakyStorage{FileStorage: fsStore, failLoads: 1}, key: "s.json", logger: zap.NewNop()})
	_, _, _ = m2.Load(context.Background(), "x") // first request
	_ = m2.Destruct()                            // or the 5-minute save
	b, err := fsStore.Load(context.Background(), "s.json")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var snap memorySnapshot
	_ = json.Unmarshal(b, &snap)
	if len(snap.Sessions) != 3 {
		t.Errorf("snapshot holds %d sessions after one failed read, want 3: everyone signed out", len(snap.Sessions))
	}
}

// Sign-out with auto_sign_in on and the Pliro session left alive: the very
// next page signs the reader straight back in.
func TestSignOutIsNotUndoneByAutoSignIn(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, paywallSite(p, "auto_sign_in 1h\n\t\tend_provider_session off"))
	b := newBrowser(t)
	resp, _ := b.navigate(site.base + "/sign-in?return_to=/news")
	t.Logf("after sign-in: %q", resp.body)
	out := b.postForm(site.base+"/sign-out", url.Values{}, site.base)
	t.Logf("sign-out: %d -> %s", out.StatusCode, out.Header.Get("Location"))
	resp, visited := b.navigate(site.base + out.Header.Get("Location"))
	t.Logf("after sign-out: %q via %v", resp.body, len(visited))
	if resp.body != "public: [] plan=[]" {
		t.Errorf("signed out reader is signed in again at once: %q", resp.body)
	}
}

// Signed out at 12:01, snapshot from 12:00, crash at 12:02: the stolen
// cookie works again after the restart.
func TestCrashNeverBringsBackAnEndedSession(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	m1 := newMemoryStoreWith(&persistence{storage: st, key: "s.json", logger: zap.NewNop()})
	_, k := newSessionID()
	t0 := now()
	_ = m1.Save(context.Background(), k, &Session{Subject: "cus_x", Created: t0, LastSeen: t0}, t0.Add(time.Hour))
	if err := m1.save(); err != nil { // the periodic snapshot
		t.Fatal(err)
	}
	_ = m1.Delete(context.Background(), k) // sign-out / back-channel logout
	// The ended list is written within endedFlushDelay.
	deadline := time.Now().Add(endedFlushDelay + 2*time.Second)
	for {
		b, _ := st.Load(context.Background(), "s.json.ended")
		if strings.Contains(string(b), k) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the ended session was not written within endedFlushDelay")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// crash: the store stops without writing anything (no Destruct); its
	// sweeper must stop too, or it would read the test clock that later
	// tests move.
	close(m1.stop)
	<-m1.stopped
	m2 := newMemoryStoreWith(&persistence{storage: st, key: "s.json", logger: zap.NewNop()})
	t.Cleanup(func() { _ = m2.Destruct() })
	if _, found, _ := m2.Load(context.Background(), k); found {
		t.Errorf("session ended before the crash is alive again after the restart")
	}
}

// slowPath wraps the provider so that one path answers after delay.
func slowPath(p *testProvider, path string, delay time.Duration) {
	inner := p.srv.Config.Handler
	p.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == path {
			time.Sleep(delay)
		}
		inner.ServeHTTP(w, r)
	})
}

// abortedRequest sends a request and hangs up after 30ms (the attacker).
func abortedRequest(t *testing.T, method, rawURL, ctype, body string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, method, rawURL, strings.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	tr := &http.Transport{DialContext: (&net.Dialer{}).DialContext, DisableKeepAlives: true}
	_, err := (&http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	t.Logf("attacker request: %v", err)
	time.Sleep(300 * time.Millisecond) // let the server side finish
}

// An anonymous attacker who hangs up on /sign-in while discovery is in
// flight makes discovery fail; every visitor then gets 502 for the backoff.
func TestHungUpRequestDoesNotBreakDiscovery(t *testing.T) {
	p := newTestProvider(t)
	slowPath(p, "/.well-known/openid-configuration", 150*time.Millisecond)
	site := startCaddy(t, siteFor(p, ""))
	abortedRequest(t, http.MethodGet, site.base+"/sign-in", "", "")
	b := newBrowser(t)
	resp := b.get(site.base + "/members/x")
	t.Logf("legit visitor after the attack: %d", resp.StatusCode)
	if resp.StatusCode == http.StatusBadGateway {
		t.Errorf("a hung-up anonymous request broke sign-in for everyone: 502")
	}
}

// Same with the JWKS: a junk logout token with an unknown kid, hung up
// while the first JWKS fetch is in flight, leaves the key set empty for
// jwksMinRefetch: every sign-in fails, and so does every genuine logout.
func TestHungUpRequestDoesNotBreakJWKS(t *testing.T) {
	p := newTestProvider(t)
	slowPath(p, "/oauth/discovery/keys", 150*time.Millisecond)
	site := startCaddy(t, siteFor(p, ""))
	b := newBrowser(t)
	b.get(site.base + "/members/x") // discovery happens (anyone could do this)
	junk := p.logoutToken(func(h, _ map[string]any) { h["kid"] = "junk" })
	abortedRequest(t, http.MethodPost, site.base+"/backchannel-logout", "application/x-www-form-urlencoded",
		url.Values{"logout_token": {junk}}.Encode())
	b2 := newBrowser(t)
	resp, visited := b2.navigate(site.base + "/members/x")
	t.Logf("legit sign-in after the attack: %d %q %v", resp.StatusCode, resp.body, visited)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a hung-up anonymous request broke sign-in for everyone: %d", resp.StatusCode)
	}
	t.Logf("jwks fetches: %d", p.jwksFetches.Load())
}

// A sign-in racing Pliro's back-channel logout. Pliro issues a code for its
// session sid, then the customer signs out at Pliro (or Pliro ends the
// session) and Pliro's notification arrives before the browser brings the
// code to the callback: the notification finds no session for sid here.
// Without a memory of ended sids, the callback would then create a session
// that outlives its Pliro session. With it, the callback answers 401 (an
// error page, never a redirect that could loop), the customer is signed
// out, and a fresh sign-in (a new Pliro session, a new sid) works as always.
func TestSignInRacingBackchannelLogoutCreatesNoSession(t *testing.T) {
	for _, tc := range []struct {
		name       string
		store      func(t *testing.T) string
		noAuthTime bool
	}{
		{"memory store", func(*testing.T) string { return "" }, false},
		{"redis store", func(t *testing.T) string { return "store redis " + startTestRedis(t).addr }, false},
		// Its iat is when the code was redeemed, after the logout: taken for
		// the time of authentication, it would let the session through.
		{"ID token without auth_time", func(*testing.T) string { return "" }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProvider(t)
			site := startCaddy(t, siteFor(p, tc.store(t)))
			b := newBrowser(t)
			if tc.noAuthTime {
				p.set(func(p *testProvider) {
					p.mutateIDToken = func(_, c map[string]any) { delete(c, "auth_time") }
				})
			}

			// Up to the callback URL, not into it.
			toPliro := b.get(site.base + "/members/x")
			callback := b.get(toPliro.Header.Get("Location")).Header.Get("Location")
			if !strings.Contains(callback, "code=") {
				t.Fatalf("provider did not answer with a code: %q", callback)
			}

			requireLogoutAccepted(t, postLogoutToken(t, site, p.logoutToken(nil)))
			p.endSession()
			time.Sleep(1100 * time.Millisecond) // the code is redeemed in a later second than the logout

			resp := b.get(callback)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("callback answered %d, Location %q; want 401", resp.StatusCode, resp.Header.Get("Location"))
			}
			requireSessionEnded(t, site, b)
			if !strings.Contains(site.logs(), "Pliro session ended during sign-in") {
				t.Errorf("no log line says why the sign-in made no session")
			}

			signIn(t, site, b, "/members/x")
			requireSessionAlive(t, site, b)
		})
	}
}

// failingKeys is a sealing-key source that is unreachable (Redis down when
// the key is first needed).
type failingKeys struct{}

func (failingKeys) current(context.Context) (*sealer, error) {
	return nil, errors.New("sealing key unavailable")
}

// A silent re-authentication that cannot start (no sealing key) is skipped
// and the page is served as it is: that page must not carry the
// Retry-After meant for the 503 of an interactive sign-in, which caches and
// crawlers would take for "come back later".
func TestFailedSilentStartLeavesNoRetryAfter(t *testing.T) {
	h, _ := fuzzHandler(t)
	h.keys = failingKeys{}
	cookie, key := newSessionID()
	t0 := now()
	s := &Session{Subject: testSubject, ProviderSID: testProviderSID, Created: t0, LastSeen: t0, ClaimsAt: t0,
		ReauthAt: t0.Add(-time.Hour), NeedsReauth: true}
	if err := h.store.Save(context.Background(), key, s, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	r, _ := unitCaddyRequest(http.MethodGet, "/article/7")
	r.Header.Set("Sec-Fetch-Mode", "navigate")
	r.Header.Set("Sec-Fetch-Dest", "document")
	r.Header.Set("Accept", "text/html")
	r.AddCookie(&http.Cookie{Name: defaultCookieName, Value: cookie})
	w := httptest.NewRecorder()
	var up unitUpstream
	if err := h.ServeHTTP(w, r, up.handler()); err != nil {
		t.Fatal(err)
	}
	if !up.called {
		t.Fatalf("the page was not served: %d %v", w.Code, w.Header())
	}
	if got := w.Header().Get("Retry-After"); got != "" {
		t.Errorf("served page carries Retry-After: %q", got)
	}
}

// The other variant of Pliro: should it keep a customer's sid across
// sign-ins (a per-browser sid), the mark of a back-channel logout must not
// lock the customer out. A sign-in that authenticated after the logout
// works; were the mark taken for "this sid may not sign in", every attempt
// for the next 11 minutes would loop through Pliro and back.
func TestSignInAfterBackchannelLogoutWithReusedSID(t *testing.T) {
	p, site, b := startSignedIn(t, "")
	// Pliro sent the logout two seconds ago (iat), and keeps the sid.
	requireLogoutAccepted(t, postLogoutToken(t, site, p.logoutToken(func(_, c map[string]any) {
		c["iat"] = time.Now().Add(-2 * time.Second).Unix()
	})))
	requireSessionEnded(t, site, b)

	resp := signIn(t, site, b, "/members/x")
	if !strings.Contains(resp.body, "sid="+testProviderSID) {
		t.Fatalf("signed in with another sid: %q", resp.body)
	}
	requireSessionAlive(t, site, b)
}
