package pliro

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// Sign-out tests. A reader who clicks "Sign out" must be signed out for
// real (on the server, and at Pliro by default), and nobody else must be
// able to sign them out or to bend the sign-out into an open redirect.

// copyCookies puts from's cookies for the site into to's jar, as an
// attacker who copied the cookie (malware, a shared computer) would.
func copyCookies(site *testSite, from, to *browser) {
	u, _ := url.Parse(site.base)
	to.jar.SetCookies(u, from.jar.Cookies(u))
}

// signOut POSTs the sign-out form from a page of the site.
func signOut(t *testing.T, site *testSite, b *browser, form url.Values) *response {
	t.Helper()
	return b.postForm(site.base+"/sign-out", form, site.base)
}

// requireRedirect checks for 303 See Other to location.
func requireRedirect(t *testing.T, resp *response, location string) {
	t.Helper()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != location {
		t.Fatalf("got %d to %q, want 303 to %q", resp.StatusCode, resp.Header.Get("Location"), location)
	}
}

// A reader signs out on a shared computer; somebody who copied the session
// cookie before (or the browser that kept it) must not stay signed in: the
// session ends on the server, not only in this browser's jar.
func TestSignOutEndsSessionServerSide(t *testing.T) {
	_, site, b := startSignedIn(t, "")
	thief := newBrowser(t)
	copyCookies(site, b, thief)
	requireSessionAlive(t, site, thief)

	resp := signOut(t, site, b, nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("status %d %q", resp.StatusCode, resp.body)
	}
	var cleared bool
	for _, c := range resp.Cookies() {
		if c.Name == defaultCookieName {
			cleared = c.Value == "" && c.MaxAge < 0
		}
	}
	if !cleared {
		t.Errorf("Set-Cookie %q does not clear the session cookie", resp.Header.Values("Set-Cookie"))
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	requireSessionEnded(t, site, b)
	requireSessionEnded(t, site, thief)
}

// A third-party page (or a same-site sibling, such as a hacked blog on
// another subdomain) auto-submits a form to /sign-out, signing readers out
// of the site against their will (logout CSRF). Browsers mark such a
// request with Sec-Fetch-Site, or at least with a foreign Origin.
func TestSignOutRefusesCrossSitePost(t *testing.T) {
	_, site, b := startSignedIn(t, "")
	for name, header := range map[string]http.Header{
		"fetch metadata cross-site": {"Sec-Fetch-Site": {"cross-site"}, "Origin": {"https://evil.example"}},
		"fetch metadata same-site":  {"Sec-Fetch-Site": {"same-site"}},
		"foreign Origin only":       {"Origin": {"https://evil.example"}},
		"opaque Origin only":        {"Origin": {"null"}},
	} {
		t.Run(name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, site.base+"/sign-out", strings.NewReader("return_to=%2Fx"))
			req.Header = header
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp := b.do(req)
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("status %d, want 403", resp.StatusCode)
			}
			if sc := resp.Header.Values("Set-Cookie"); len(sc) > 0 {
				t.Errorf("refused request set cookies %q", sc)
			}
			requireSessionAlive(t, site, b)
		})
	}
}

// Link prefetchers, crawlers and <img src="/sign-out"> send GETs: a GET
// must never sign anybody out. A signed-in reader gets a page with a button
// that POSTs; an anonymous visitor goes to sign_out_redirect.
func TestSignOutGetNeverSignsOut(t *testing.T) {
	_, site, b := startSignedIn(t, "")

	resp := b.get(site.base + "/sign-out?return_to=%2Farticles%2F7")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("got %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	for _, want := range []string{`<form method="post" action="/sign-out">`, `name="return_to" value="/articles/7"`, "Rita Reader"} {
		if !strings.Contains(resp.body, want) {
			t.Errorf("sign-out page lacks %q:\n%s", want, resp.body)
		}
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	req, _ := http.NewRequest(http.MethodHead, site.base+"/sign-out", nil)
	if resp := b.do(req); resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD: status %d", resp.StatusCode)
	}
	requireSessionAlive(t, site, b)

	anonymous := newBrowser(t)
	requireRedirect(t, anonymous.get(site.base+"/sign-out"), "/")
	requireRedirect(t, anonymous.get(site.base+"/sign-out?return_to=//evil.example"), "/")

	req, _ = http.NewRequest(http.MethodPut, site.base+"/sign-out", nil)
	if resp := b.do(req); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("PUT: status %d, want 405", resp.StatusCode)
	}
	requireSessionAlive(t, site, b)
}

// By default sign-out continues to Pliro's end_session, so that the next
// "Sign in" (or the next person at a shared computer) is not let straight
// back in by a Pliro session that is still alive (RP-Initiated Logout 1.0).
func TestSignOutEndsProviderSession(t *testing.T) {
	p := newTestProvider(t)
	var mu sync.Mutex
	var issued string // the ID token the provider issued
	p.set(func(p *testProvider) {
		p.sign = func(header, claims map[string]any) string {
			token := p.signES256(header, claims)
			mu.Lock()
			issued = token
			mu.Unlock()
			return token
		}
	})
	site := startCaddy(t, siteFor(p, ""))
	b := newBrowser(t)
	signIn(t, site, b, "/members/x")

	resp := signOut(t, site, b, url.Values{"return_to": {"/ignored"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("status %d %q", resp.StatusCode, resp.body)
	}
	to, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	if got := to.Scheme + "://" + to.Host + to.Path; got != p.issuer+"/oauth/end_session" {
		t.Fatalf("redirected to %s, want the provider's end_session", to)
	}
	q := to.Query()
	mu.Lock()
	wantHint := issued
	mu.Unlock()
	if q.Get("client_id") != testClientID || q.Get("post_logout_redirect_uri") != site.base+"/" {
		t.Errorf("end_session query %v", q)
	}
	if hint := q.Get("id_token_hint"); hint == "" || hint != wantHint {
		t.Errorf("id_token_hint %q, want the issued ID token %q", hint, wantHint)
	}
	if sub := jwtSubject(t, q.Get("id_token_hint")); sub != testSubject {
		t.Errorf("id_token_hint names %q", sub)
	}
	requireSessionEnded(t, site, b)

	final, visited := b.navigate(to.String())
	if final.StatusCode != http.StatusOK || final.body != "public: []" || final.Request.URL.String() != site.base+"/" {
		t.Errorf("after end_session: %d %q at %s; visited %v", final.StatusCode, final.body, final.Request.URL, visited)
	}
	var signedIn bool
	p.set(func(p *testProvider) { signedIn = p.signedIn })
	if signedIn {
		t.Error("the provider session is still alive")
	}
}

// jwtSubject reads the sub claim of a JWT without verifying it.
func jwtSubject(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("%q is not a compact JWT", token)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Subject string `json:"sub"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	return c.Subject
}

// With end_provider_session off the reader stays on the site: the form's
// return_to when it is a page of this site, else sign_out_redirect. An
// attacker's link to /sign-out?return_to=https://evil.example must not turn
// the site into an open redirector for a phishing page ("you have been
// signed out, sign in again").
func TestSignOutWithoutProviderSessionRedirectsLocallyOnly(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, "end_provider_session off\n\t\tsign_out_redirect /goodbye"))
	for _, c := range []struct{ returnTo, want string }{
		{"", "/goodbye"},
		{"/articles/7?page=2", "/articles/7?page=2"},
		{"//evil.example", "/goodbye"},
		{"https://evil.example", "/goodbye"},
		{`/\evil.example`, "/goodbye"},
	} {
		t.Run(c.returnTo, func(t *testing.T) {
			b := newBrowser(t)
			signIn(t, site, b, "/members/x")
			form := url.Values{}
			if c.returnTo != "" {
				form.Set("return_to", c.returnTo)
			}
			requireRedirect(t, signOut(t, site, b, form), c.want)
			requireSessionEnded(t, site, b)
		})
	}
	var signedIn bool
	p.set(func(p *testProvider) { signedIn = p.signedIn })
	if !signedIn {
		t.Error("the provider session was ended although end_provider_session is off")
	}
}

// Pliro is down when the reader signs out (its discovery has not been
// learned since the last reload): the sign-out must still end the session
// here and show the local page, rather than fail and leave the reader
// signed in.
func TestSignOutWhileProviderUnreachable(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	b := newBrowser(t)
	signIn(t, site, b, "/members/x")
	thief := newBrowser(t)
	copyCookies(site, b, thief)

	// A reload that changes the provider's settings makes a new provider
	// that has not discovered Pliro yet; the sessions survive it.
	p.down.Store(true)
	site.load(siteFor(p, "sign_out_redirect /goodbye\n\t\tprovider_timeout 9s"))
	requireSessionAlive(t, site, b)

	requireRedirect(t, signOut(t, site, b, nil), "/goodbye")
	requireSessionEnded(t, site, b)
	requireSessionEnded(t, site, thief)
}

// The ID token is kept only to send as id_token_hint at sign-out: with
// end_provider_session off it is not stored at all (it is some 40% of a
// session's memory). Read in Redis, where the stored session can be seen.
func TestIDTokenKeptOnlyForProviderSignOut(t *testing.T) {
	for _, c := range []struct {
		option string
		kept   bool
	}{
		{"", true},
		{"end_provider_session off", false},
	} {
		t.Run(fmt.Sprintf("%q", c.option), func(t *testing.T) {
			srv := startTestRedis(t)
			p := newTestProvider(t)
			site := startCaddy(t, siteFor(p, c.option+"\n\t\tstore redis "+srv.addr))
			signIn(t, site, newBrowser(t), "/members/x")

			raw := rawRedis(t, srv.addr)
			keys, err := raw.Keys(context.Background(), "*}*s:*").Result()
			if err != nil || len(keys) != 1 {
				t.Fatalf("session keys %v, %v; want one", keys, err)
			}
			data, err := raw.HGet(context.Background(), keys[0], "data").Result()
			if err != nil {
				t.Fatal(err)
			}
			var stored Session
			if err := json.Unmarshal([]byte(data), &stored); err != nil {
				t.Fatal(err)
			}
			if kept := stored.IDToken != ""; kept != c.kept {
				t.Errorf("ID token stored: %v, want %v", kept, c.kept)
			}
		})
	}
}
