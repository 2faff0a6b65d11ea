package pliro

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// siteFor is the Caddyfile site body used by the sign-in tests: the module
// on every route, /members/* and /premium/* protected, everything else
// public, and the identity echoed so the tests can see it.
func siteFor(p *testProvider, extra string) string {
	return fmt.Sprintf(`
	pliro {
		issuer %s
		client_id %s
		client_secret {env.PLIRO_TEST_SECRET}
		%s
	}
	pliro_require /members/*
	pliro_require /premium/* plan premium premium-plus
	respond /members/* "members: id={http.auth.user.id} email={http.auth.user.email} name={http.auth.user.name} plan={http.auth.user.plan} slugs={http.auth.user.plan_slugs} sid={http.auth.user.sid}"
	respond /premium/* "premium: {http.auth.user.id}"
	respond "public: [{http.auth.user.id}]"
`, p.issuer, p.clientID, extra)
}

func init() {
	// The secret reaches the config as {env.PLIRO_TEST_SECRET}, as it should
	// in production.
	if err := os.Setenv("PLIRO_TEST_SECRET", testClientSecret); err != nil {
		panic(err)
	}
}

// signIn walks a browser through sign-in from a protected page and checks it
// lands back on that page, signed in.
func signIn(t *testing.T, site *testSite, b *browser, path string) *response {
	t.Helper()
	resp, visited := b.navigate(site.base + path)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("sign-in via %s ended with %d %q; visited %v", path, resp.StatusCode, resp.body, visited)
	}
	if got := resp.Request.URL.RequestURI(); got != path {
		t.Fatalf("landed on %s, want %s", got, path)
	}
	return resp
}

func TestSignInFromProtectedPageReturnsThere(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	b := newBrowser(t)

	resp, visited := b.navigate(site.base + "/members/article/7?page=2")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d %q, visited %v", resp.StatusCode, resp.body, visited)
	}
	want := "members: id=cus_1BxEm4QKh4Rb5v6Qvu2THx email=reader@example.com name=Rita Reader plan=premium slugs=premium sid=sid_7f3a9c"
	if resp.body != want {
		t.Errorf("body %q, want %q", resp.body, want)
	}
	if got := resp.Request.URL.RequestURI(); got != "/members/article/7?page=2" {
		t.Errorf("returned to %s", got)
	}
	if len(visited) != 4 { // page -> authorize -> callback -> page
		t.Errorf("visited %v", visited)
	}
	// The authorization request carried everything OIDC Core and RFC 9700 ask.
	q := p.lastAuthorize
	for _, k := range []string{"state", "nonce", "code_challenge", "client_id", "redirect_uri"} {
		if q.Get(k) == "" {
			t.Errorf("authorize request lacks %s: %v", k, q)
		}
	}
	if q.Get("code_challenge_method") != "S256" || q.Get("scope") != "openid email profile" {
		t.Errorf("authorize request %v", q)
	}
	if q.Get("redirect_uri") != site.base+"/callback" {
		t.Errorf("redirect_uri %q", q.Get("redirect_uri"))
	}
	// Public pages see the customer too.
	if got := b.get(site.base + "/").body; got != "public: ["+testSubject+"]" {
		t.Errorf("public page %q", got)
	}
}

func TestAnonymousVisitorOnPublicPage(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	resp := newBrowser(t).get(site.base + "/news")
	if resp.StatusCode != http.StatusOK || resp.body != "public: []" {
		t.Fatalf("got %d %q", resp.StatusCode, resp.body)
	}
}

func TestNonNavigationGets401(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	b := newBrowser(t)
	cases := map[string]http.Header{
		"fetch":        {"Sec-Fetch-Mode": {"cors"}, "Accept": {"*/*"}},
		"xhr":          {"X-Requested-With": {"XMLHttpRequest"}, "Accept": {"text/html"}},
		"api client":   {"Accept": {"application/json"}},
		"image in tag": {"Sec-Fetch-Mode": {"no-cors"}, "Sec-Fetch-Dest": {"image"}},
	}
	for name, h := range cases {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, site.base+"/members/x", nil)
			req.Header = h
			if resp := b.do(req); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("status %d, want 401", resp.StatusCode)
			}
		})
	}
	t.Run("POST", func(t *testing.T) {
		resp := b.postForm(site.base+"/members/x", url.Values{"a": {"b"}}, site.base)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("status %d, want 401", resp.StatusCode)
		}
	})
}

func TestSignInPathWithReturnTo(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	b := newBrowser(t)
	resp, _ := b.navigate(site.base + "/sign-in?return_to=" + url.QueryEscape("/members/article/9"))
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.body, "members: id="+testSubject) {
		t.Fatalf("got %d %q", resp.StatusCode, resp.body)
	}
	// Signed in already: straight to return_to, no trip to the provider.
	r := b.get(site.base + "/sign-in?return_to=/members/x")
	if r.StatusCode != http.StatusSeeOther || r.Header.Get("Location") != "/members/x" {
		t.Fatalf("got %d to %q", r.StatusCode, r.Header.Get("Location"))
	}
}

// expectSignInFails runs a sign-in that must fail with the given status and
// leave the browser signed out.
func expectSignInFails(t *testing.T, site *testSite, b *browser, status int) *response {
	t.Helper()
	resp, visited := b.navigate(site.base + "/members/x")
	if resp.StatusCode != status {
		t.Fatalf("sign-in ended with %d %q, want %d; visited %v", resp.StatusCode, resp.body, status, visited)
	}
	if got := b.get(site.base + "/").body; got != "public: []" {
		t.Fatalf("after a failed sign-in the visitor is %q, want anonymous", got)
	}
	return resp
}

// TestHostileIDTokensAreRefused: the token endpoint is reached over TLS in
// production, but a compromised or confused provider, a proxy in between, or
// a bug must never turn a bad ID token into a session. Each case is one way
// to forge or misuse an ID token (OIDC Core §3.1.3.7).
func TestHostileIDTokensAreRefused(t *testing.T) {
	otherKey := newTestProvider(t) // its key signs the "bad signature" case
	cases := []struct {
		name   string
		mutate func(header, claims map[string]any)
		sign   func(p *testProvider) func(header, claims map[string]any) string
	}{
		{name: "signature by another key", sign: func(p *testProvider) func(h, c map[string]any) string {
			return func(h, c map[string]any) string { return signES256With(otherKey.key, h, c) }
		}},
		{name: "alg none", sign: func(*testProvider) func(h, c map[string]any) string { return signNone }},
		{name: "HS256 keyed with the client secret", sign: func(*testProvider) func(h, c map[string]any) string {
			return func(h, c map[string]any) string { return signHS256([]byte(testClientSecret), h, c) }
		}},
		{name: "wrong issuer", mutate: func(_, c map[string]any) { c["iss"] = "https://evil.example" }},
		{name: "wrong audience", mutate: func(_, c map[string]any) { c["aud"] = "another-client" }},
		{name: "several audiences without azp", mutate: func(_, c map[string]any) { c["aud"] = []string{testClientID, "another-client"} }},
		{name: "azp of another client", mutate: func(_, c map[string]any) { c["azp"] = "another-client" }},
		{name: "nonce of another sign-in", mutate: func(_, c map[string]any) { c["nonce"] = "somebody-elses-nonce" }},
		{name: "nonce missing", mutate: func(_, c map[string]any) { delete(c, "nonce") }},
		{name: "expired", mutate: func(_, c map[string]any) {
			c["iat"] = time.Now().Add(-time.Hour).Unix()
			c["exp"] = time.Now().Add(-30 * time.Minute).Unix()
		}},
		{name: "issued in the future", mutate: func(_, c map[string]any) { c["iat"] = time.Now().Add(time.Hour).Unix() }},
		{name: "iat missing", mutate: func(_, c map[string]any) { delete(c, "iat") }},
		{name: "sub missing", mutate: func(_, c map[string]any) { delete(c, "sub") }},
		{name: "at_hash of another access token", mutate: func(_, c map[string]any) { c["at_hash"] = "AAAAAAAAAAAAAAAAAAAAAA" }},
		{name: "unknown key id", mutate: func(h, _ map[string]any) { h["kid"] = "not-a-published-key" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProvider(t)
			p.set(func(p *testProvider) {
				p.mutateIDToken = tc.mutate
				if tc.sign != nil {
					p.sign = tc.sign(p)
				}
			})
			site := startCaddy(t, siteFor(p, ""))
			expectSignInFails(t, site, newBrowser(t), http.StatusBadGateway)
			if strings.Contains(site.logs(), testClientSecret) {
				t.Error("client secret in the logs")
			}
		})
	}
}

func TestTokenEndpointFailuresShowAnError(t *testing.T) {
	cases := map[string]http.HandlerFunc{
		"500": func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) },
		"garbage": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, "{not json")
		},
		"no id_token": func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, map[string]any{"access_token": "a", "token_type": "Bearer"})
		},
		"invalid_client": func(w http.ResponseWriter, r *http.Request) {
			writeJSONStatus(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client"})
		},
	}
	for name, handler := range cases {
		t.Run(name, func(t *testing.T) {
			p := newTestProvider(t)
			p.set(func(p *testProvider) { p.tokenEndpoint = handler })
			site := startCaddy(t, siteFor(p, ""))
			expectSignInFails(t, site, newBrowser(t), http.StatusBadGateway)
		})
	}
	t.Run("code already used", func(t *testing.T) {
		p := newTestProvider(t)
		p.set(func(p *testProvider) {
			p.tokenEndpoint = func(w http.ResponseWriter, r *http.Request) {
				writeJSONStatus(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant"})
			}
		})
		site := startCaddy(t, siteFor(p, ""))
		expectSignInFails(t, site, newBrowser(t), http.StatusBadRequest)
	})
}

// TestTokenEndpointRedirectIsNotFollowed: a token endpoint (or something in
// front of it) answers with a redirect elsewhere. Following it would send
// the code, the PKCE verifier and, with client_secret_post, the client
// secret to that other server; the module's client never follows redirects
// (RFC 9700 §4.12: no redirects for requests carrying credentials).
func TestTokenEndpointRedirectIsNotFollowed(t *testing.T) {
	var reached atomic.Int32
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
	}))
	t.Cleanup(elsewhere.Close)
	p := newTestProvider(t)
	p.set(func(p *testProvider) {
		p.tokenEndpoint = func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, elsewhere.URL+"/token", http.StatusTemporaryRedirect)
		}
	})
	site := startCaddy(t, siteFor(p, "token_auth_method client_secret_post"))
	expectSignInFails(t, site, newBrowser(t), http.StatusBadGateway)
	if n := reached.Load(); n != 0 {
		t.Fatalf("the token request followed a redirect: %d request(s) elsewhere", n)
	}
}

// TestKeyRotationAcceptedAfterOneRefetch: Pliro rotates its signing key; the
// first token signed with the new key makes the module fetch the JWKS again,
// once, and the sign-in succeeds.
func TestKeyRotationAcceptedAfterOneRefetch(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	signIn(t, site, newBrowser(t), "/members/a")
	if n := p.jwksFetches.Load(); n != 1 {
		t.Fatalf("JWKS fetched %d times for the first sign-in, want 1", n)
	}
	p.rotateKey()
	restore := now
	now = func() time.Time { return restore().Add(jwksMinRefetch + time.Second) }
	t.Cleanup(func() { now = restore })
	signIn(t, site, newBrowser(t), "/members/b")
	if n := p.jwksFetches.Load(); n != 2 {
		t.Fatalf("JWKS fetched %d times after the rotation, want 2", n)
	}
}

// TestReplayedCallbackIsRefused: somebody who sees a callback URL (browser
// history, a proxy log, a Referer) replays it. The state is good for one
// callback only (RFC 9700 §4.7.1) and the code for one exchange.
func TestReplayedCallbackIsRefused(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	b := newBrowser(t)
	_, visited := b.navigate(site.base + "/members/a")
	callback := visited[2]
	if !strings.Contains(callback, "/callback?") {
		t.Fatalf("no callback in %v", visited)
	}
	// Same browser, cookies intact except the spent attempt cookie.
	if resp := b.get(callback); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("replayed callback: %d, want 400", resp.StatusCode)
	}
}

// TestReplayedAttemptCookieIsRefused: an attacker who copied both the
// callback URL and the attempt cookie replays them in another browser; the
// state's one-time use refuses the second callback.
func TestReplayedAttemptCookieIsRefused(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	victim := newBrowser(t)
	first := victim.get(site.base + "/members/a")
	authorize := first.Header.Get("Location")
	back := victim.get(authorize) // provider redirects to the callback
	callback := back.Header.Get("Location")

	attacker := newBrowser(t)
	u, _ := url.Parse(site.base)
	attacker.jar.SetCookies(u, victim.jar.Cookies(u))
	if resp := victim.get(callback); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("victim's callback: %d %q", resp.StatusCode, resp.body)
	}
	if resp := attacker.get(callback); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("replayed attempt: %d, want 400", resp.StatusCode)
	}
}

// TestLoginCSRFIsRefused: an attacker starts a sign-in with their own Pliro
// account and makes the victim's browser open the callback, to sign the
// victim in as the attacker (who then reads what the victim does). The state
// is bound to the browser that started the sign-in (RFC 9700 §4.7.1), so the
// victim's browser has no attempt for it.
func TestLoginCSRFIsRefused(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	attacker := newBrowser(t)
	first := attacker.get(site.base + "/members/a")
	callback := attacker.get(first.Header.Get("Location")).Header.Get("Location")

	victim := newBrowser(t)
	if resp := victim.get(callback); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("foreign callback: %d, want 400", resp.StatusCode)
	}
	if got := victim.get(site.base + "/").body; got != "public: []" {
		t.Fatalf("victim is %q, want anonymous", got)
	}
}

// TestSeveralTabsSignInAtOnce: a reader opens three protected articles in
// tabs; each tab's sign-in has its own attempt cookie and all succeed, each
// returning to its own article.
func TestSeveralTabsSignInAtOnce(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	b := newBrowser(t)
	var callbacks []string
	for _, path := range []string{"/members/1", "/members/2", "/members/3"} {
		first := b.get(site.base + path)
		callbacks = append(callbacks, b.get(first.Header.Get("Location")).Header.Get("Location"))
	}
	for i, cb := range callbacks {
		resp := b.get(cb)
		want := fmt.Sprintf("/members/%d", i+1)
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != want {
			t.Fatalf("tab %d: %d to %q, want 303 to %s", i+1, resp.StatusCode, resp.Header.Get("Location"), want)
		}
	}
}

// TestTooManySignInAttemptsArePruned: a page that opens dozens of protected
// frames must not grow the reader's Cookie header without bound.
func TestTooManySignInAttemptsArePruned(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	b := newBrowser(t)
	for range 20 {
		b.get(site.base + "/members/x")
	}
	u, _ := url.Parse(site.base)
	n := 0
	for _, c := range b.jar.Cookies(u) {
		if strings.HasPrefix(c.Name, signInCookieBase) {
			n++
		}
	}
	if n > maxSignInAttempts {
		t.Fatalf("%d attempt cookies held, want at most %d", n, maxSignInAttempts)
	}
}

func TestProviderErrorResponses(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	cases := []struct {
		query  string
		status int
	}{
		{"error=access_denied", http.StatusForbidden},
		{"error=server_error&error_description=%3Cscript%3E", http.StatusBadRequest},
		{"", http.StatusBadRequest}, // no code, no error
		// RFC 9207: a response naming another issuer is a mix-up attack.
		{"code=abc&iss=https%3A%2F%2Fevil.example", http.StatusBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.query, func(t *testing.T) {
			b := newBrowser(t)
			first := b.get(site.base + "/members/x")
			auth, _ := url.Parse(first.Header.Get("Location"))
			state := auth.Query().Get("state")
			resp := b.get(site.base + "/callback?state=" + url.QueryEscape(state) + "&" + tc.query)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
		})
	}
}

// TestDiscoveryOfAnotherIssuerIsRefused: a discovery document that names
// another issuer (a mix-up, or a hijacked well-known path) must not be
// used (OIDC Discovery 1.0 §4.3).
func TestDiscoveryOfAnotherIssuerIsRefused(t *testing.T) {
	p := newTestProvider(t)
	real := p.issuer
	p.set(func(p *testProvider) { p.issuer = "https://evil.example" })
	site := startCaddy(t, strings.Replace(siteFor(p, ""), "issuer https://evil.example", "issuer "+real, 1))
	if resp := newBrowser(t).get(site.base + "/members/x"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("sign-in with a foreign discovery document: %d, want 502", resp.StatusCode)
	}
}

func TestPinnedKeyWithoutDiscovery(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, "public_key_file "+p.publicKeyPEM(t)))
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	if d, j := p.discoveryFetches.Load(), p.jwksFetches.Load(); d != 0 || j != 0 {
		t.Fatalf("pinned mode fetched discovery %d and JWKS %d times, want 0", d, j)
	}
	// Pliro's PKCE support is unknown; with no discovery it is not sent.
	if p.lastAuthorize.Get("code_challenge") != "" {
		t.Error("PKCE sent without being advertised")
	}
}

func TestNoPKCEWhenNotAdvertised(t *testing.T) {
	p := newTestProvider(t)
	p.set(func(p *testProvider) { p.advertisePKCE = false })
	site := startCaddy(t, siteFor(p, ""))
	signIn(t, site, newBrowser(t), "/members/a")
	if p.lastAuthorize.Get("code_challenge") != "" || p.lastToken.Get("code_verifier") != "" {
		t.Error("PKCE sent without being advertised")
	}
}

func TestClientSecretPost(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, "token_auth_method client_secret_post"))
	signIn(t, site, newBrowser(t), "/members/a")
	if p.lastToken.Get("client_secret") != testClientSecret {
		t.Error("client secret not sent in the form")
	}
}

// TestProviderDownAtStart: Caddy starts and serves public pages while Pliro
// is unreachable; protected pages answer 502; once Pliro is back, sign-in
// works without a restart.
func TestProviderDownAtStart(t *testing.T) {
	p := newTestProvider(t)
	p.down.Store(true)
	site := startCaddy(t, siteFor(p, ""))
	b := newBrowser(t)
	if got := b.get(site.base + "/").body; got != "public: []" {
		t.Fatalf("public page while the provider is down: %q", got)
	}
	if resp := b.get(site.base + "/members/x"); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("protected page while the provider is down: %d, want 502", resp.StatusCode)
	}
	p.down.Store(false)
	// Discovery is retried with backoff; move the clock past it.
	restore := now
	now = func() time.Time { return restore().Add(2 * time.Minute) }
	t.Cleanup(func() { now = restore })
	signIn(t, site, b, "/members/x")
}

// TestSlowProviderDoesNotHoldSignIns: Pliro's token endpoint hangs; every
// sign-in fails after provider_timeout with a 502, and no goroutine is left
// behind waiting.
func TestSlowProviderDoesNotHoldSignIns(t *testing.T) {
	p := newTestProvider(t)
	p.set(func(p *testProvider) {
		p.tokenEndpoint = func(w http.ResponseWriter, r *http.Request) {
			_ = r.ParseForm() // read the body, so a closed connection cancels r's context
			select {
			case <-time.After(10 * time.Second):
			case <-r.Context().Done():
			}
		}
	})
	site := startCaddy(t, siteFor(p, "provider_timeout 300ms"))
	signIn := func() (int, time.Duration) {
		b := newBrowser(t)
		start := time.Now()
		resp, _ := b.navigate(site.base + "/members/x")
		return resp.StatusCode, time.Since(start)
	}
	signIn() // warm up connections and discovery
	before := runtime.NumGoroutine()
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Well below the endpoint's 10s, with room for a loaded machine.
			if status, took := signIn(); status != http.StatusBadGateway || took > 5*time.Second {
				t.Errorf("sign-in against a hanging token endpoint: %d after %s", status, took)
			}
		}()
	}
	wg.Wait()
	// Idle keep-alive connections are not a pile-up: 20 stuck sign-ins
	// would be 20 goroutines or more.
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+10 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+10 {
		t.Fatalf("%d goroutines after the slow sign-ins, %d before", n, before)
	}
}

// TestClockSkewIsConfigurable: Pliro's clock runs 90 s ahead of Caddy's, so
// its ID tokens look issued in the future: refused with clock_skew 0s,
// accepted with 2m.
func TestClockSkewIsConfigurable(t *testing.T) {
	for _, tc := range []struct {
		skew string
		ok   bool
	}{{"clock_skew 0s", false}, {"clock_skew 2m", true}} {
		t.Run(tc.skew, func(t *testing.T) {
			p := newTestProvider(t)
			p.set(func(p *testProvider) {
				p.mutateIDToken = func(_, c map[string]any) {
					c["iat"] = time.Now().Add(90 * time.Second).Unix()
					c["exp"] = time.Now().Add(210 * time.Second).Unix()
				}
			})
			site := startCaddy(t, siteFor(p, tc.skew))
			resp, _ := newBrowser(t).navigate(site.base + "/members/x")
			if ok := resp.StatusCode == http.StatusOK; ok != tc.ok {
				t.Fatalf("%s: %d", tc.skew, resp.StatusCode)
			}
		})
	}
}

// TestSessionsSurviveReload: `caddy reload` is routine; readers stay signed in.
func TestSessionsSurviveReload(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	site.load(siteFor(p, "idle_timeout 30d"))
	if resp := b.get(site.base + "/members/a"); resp.StatusCode != http.StatusOK {
		t.Fatalf("after reload: %d %q", resp.StatusCode, resp.body)
	}
}

// TestSessionsSurviveRestart: an upgrade restarts Caddy; with the default
// store, sessions and the replay cache are written to Caddy's storage at
// shutdown and read back at start.
func TestSessionsSurviveRestart(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	// A sign-in in progress across the restart finishes too: the sealing
	// key is kept in storage.
	other := newBrowser(t)
	first := other.get(site.base + "/members/b")
	callback := other.get(first.Header.Get("Location")).Header.Get("Location")

	site.restart(siteFor(p, ""))
	if resp := b.get(site.base + "/members/a"); resp.StatusCode != http.StatusOK {
		t.Fatalf("after restart: %d %q", resp.StatusCode, resp.body)
	}
	if resp := other.get(callback); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/members/b" {
		t.Fatalf("sign-in across the restart: %d %q", resp.StatusCode, resp.body)
	}
}

// TestBrokenCookiesMeanSignedOut: a tampered, truncated or unknown session
// cookie is an anonymous visitor, never an error.
func TestBrokenCookiesMeanSignedOut(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	for name, value := range map[string]string{
		"unknown ID":   strings.Repeat("A", 43),
		"truncated":    "abc",
		"not base64":   strings.Repeat("*", 43),
		"huge":         strings.Repeat("A", 4000),
		"empty":        "",
		"quote inside": `"x"`,
	} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, site.base+"/", nil)
			req.AddCookie(&http.Cookie{Name: defaultCookieName, Value: value})
			if resp := newBrowser(t).do(req); resp.StatusCode != http.StatusOK || resp.body != "public: []" {
				t.Fatalf("got %d %q", resp.StatusCode, resp.body)
			}
		})
	}
}

func TestSessionEndsAfterIdleTimeoutAndMaxLifetime(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, "idle_timeout 1h\n\t\tmax_lifetime 3h"))
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	restore := now
	t.Cleanup(func() { now = restore })
	at := func(d time.Duration) { now = func() time.Time { return restore().Add(d) } }

	// Visits every 50 minutes keep the session alive (sliding idle timeout)…
	for _, d := range []time.Duration{50 * time.Minute, 100 * time.Minute, 150 * time.Minute} {
		at(d)
		if got := b.get(site.base + "/").body; got != "public: ["+testSubject+"]" {
			t.Fatalf("at +%s: %q, want signed in", d, got)
		}
	}
	// …but not past the absolute lifetime.
	at(3*time.Hour + time.Minute)
	if got := b.get(site.base + "/").body; got != "public: []" {
		t.Fatalf("after max_lifetime: %q, want anonymous", got)
	}

	// And an idle session ends after the idle timeout.
	now = restore
	b2 := newBrowser(t)
	signIn(t, site, b2, "/members/a")
	at(61 * time.Minute)
	if got := b2.get(site.base + "/").body; got != "public: []" {
		t.Fatalf("after idle_timeout: %q, want anonymous", got)
	}
}

// TestSessionFixation: an attacker plants a session cookie in the victim's
// browser before sign-in (e.g. through a sibling subdomain on plain HTTP).
// Sign-in always mints a new session ID, so the planted one never becomes a
// signed-in session.
func TestSessionFixation(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	planted, _ := newSessionID()
	b := newBrowser(t)
	u, _ := url.Parse(site.base)
	b.jar.SetCookies(u, []*http.Cookie{{Name: defaultCookieName, Value: planted, Path: "/"}})
	signIn(t, site, b, "/members/a")
	if got := b.cookie(site.base, defaultCookieName); got == planted || got == "" {
		t.Fatalf("session cookie after sign-in is the planted one (or none)")
	}
	attacker := newBrowser(t)
	attacker.jar.SetCookies(u, []*http.Cookie{{Name: defaultCookieName, Value: planted, Path: "/"}})
	if got := attacker.get(site.base + "/").body; got != "public: []" {
		t.Fatalf("planted cookie is %q, want anonymous", got)
	}
}

// TestSpoofedIdentityHeadersNeverReachTheUpstream: a client sends
// X-Pliro-Id: cus_victim (or a variant the upstream may read the same way)
// hoping the app behind Caddy takes it for the signed-in customer. The
// module removes every such header before setting its own.
func TestSpoofedIdentityHeadersNeverReachTheUpstream(t *testing.T) {
	p := newTestProvider(t)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var lines []string
		for name, values := range r.Header {
			if strings.Contains(strings.ToLower(strings.ReplaceAll(name, "_", "-")), "pliro") {
				lines = append(lines, name+"="+strings.Join(values, ","))
			}
		}
		sort.Strings(lines)
		fmt.Fprint(w, strings.Join(lines, ";"))
	}))
	t.Cleanup(upstream.Close)
	site := startCaddy(t, fmt.Sprintf(`
	pliro {
		issuer %s
		client_id %s
		client_secret {env.PLIRO_TEST_SECRET}
		identity_headers
	}
	pliro_require /members/*
	reverse_proxy %s
`, p.issuer, p.clientID, upstream.URL))

	spoof := func(b *browser) *response {
		req, _ := http.NewRequest(http.MethodGet, site.base+"/members/a", nil)
		req.Header.Set("X-Pliro-Id", "cus_victim")
		req.Header["x-pliro-plan"] = []string{"premium"}
		req.Header["X_Pliro_Email"] = []string{"victim@example.com"}
		req.Header.Set("X-PLIRO-NAME", "Victim")
		return b.do(req)
	}
	// Anonymous: the upstream sees no identity at all… (a public route)
	anon := newBrowser(t)
	req, _ := http.NewRequest(http.MethodGet, site.base+"/public", nil)
	req.Header.Set("X-Pliro-Id", "cus_victim")
	req.Header["X_Pliro_Id"] = []string{"cus_victim"}
	if resp := anon.do(req); resp.body != "" {
		t.Fatalf("anonymous request reached the upstream with %q", resp.body)
	}
	// …and signed in, only the module's headers.
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	got := spoof(b).body
	want := "X-Pliro-Email=reader@example.com;X-Pliro-Id=" + testSubject + ";X-Pliro-Name=Rita Reader;X-Pliro-Plan=premium;X-Pliro-Plans=premium"
	if got != want {
		t.Fatalf("upstream saw %q\nwant %q", got, want)
	}
}
