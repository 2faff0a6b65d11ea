package pliro

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
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
	if err := setenvOnce("PLIRO_TEST_SECRET", testClientSecret); err != nil {
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
