package pliro

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// paywallSite: free pages, pages for signed-in readers, premium pages
// (with a subscribe page at the provider) and a staff area by claim, with a
// paywall page through handle_errors.
func paywallSite(p *testProvider, extra string) string {
	return fmt.Sprintf(`
	pliro {
		issuer %s
		client_id %s
		client_secret {env.PLIRO_TEST_SECRET}
		%s
	}
	pliro_require /members/*
	pliro_require /premium/* {
		plan premium premium-plus
		subscribe_url %[4]s/offers/premium/subscribe
	}
	pliro_require /offer/* {
		plan premium
		subscribe_url %[4]s/offers/premium/subscribe?ref=site redirect
	}
	pliro_require /staff/* {
		claim role editor chief
	}
	respond /members/* "members: {http.auth.user.id}"
	respond /premium/* "premium: {http.auth.user.plan}"
	respond /offer/* "offer: {http.auth.user.plan}"
	respond /staff/* "staff: {http.auth.user.id}"
	respond "public: [{http.auth.user.id}] plan=[{http.auth.user.plan}]"
	handle_errors 403 {
		respond "paywall: needs {http.pliro.required_plans}; continue {http.pliro.continue_url}; subscribe {http.pliro.subscribe_url}" 403
	}
`, p.issuer, p.clientID, extra, p.issuer)
}

func withPlan(plan string) func(p *testProvider) {
	return func(p *testProvider) {
		if plan == "" {
			delete(p.customer, "plan")
			delete(p.customer, "plan_slugs")
			return
		}
		p.customer["plan"] = plan
		p.customer["plan_slugs"] = []string{plan}
	}
}

// moveClock moves the package clock forward by d until the test ends or
// the returned function puts it back.
func moveClock(t *testing.T, d time.Duration) (restore func()) {
	t.Helper()
	prev := now
	now = func() time.Time { return prev().Add(d) }
	restore = func() { now = prev }
	t.Cleanup(restore)
	return restore
}

func TestPlanGrantedAndDenied(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, paywallSite(p, ""))

	subscriber := newBrowser(t)
	if got := signIn(t, site, subscriber, "/premium/a").body; got != "premium: premium" {
		t.Fatalf("subscriber: %q", got)
	}

	p.set(withPlan(""))
	reader := newBrowser(t)
	signIn(t, site, reader, "/members/a")
	resp := reader.get(site.base + "/premium/a?x=1")
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("reader without plan: %d %q", resp.StatusCode, resp.body)
	}
	back := site.base + "/premium/a?pliro_recheck=1&x=1"
	want := "paywall: needs premium,premium-plus; continue " + back +
		"; subscribe " + p.issuer + "/offers/premium/subscribe?continue_url=" + url.QueryEscape(back)
	if resp.body != want {
		t.Fatalf("paywall page %q\nwant %q", resp.body, want)
	}
	// premium-plus also opens premium pages (plan_slugs match).
	p.set(func(p *testProvider) {
		p.customer["plan"] = "gold"
		p.customer["plan_slugs"] = []string{"gold", "premium-plus"}
	})
	plus := newBrowser(t)
	signIn(t, site, plus, "/premium/b")
}

// TestPlanBoughtAfterSignInGrantsAccessAtOnce: the reader signed in without
// a plan, bought it in Pliro, and opens a premium article: the module asks
// userinfo before denying, and serves the article on the same request.
func TestPlanBoughtAfterSignInGrantsAccessAtOnce(t *testing.T) {
	p := newTestProvider(t)
	p.set(withPlan(""))
	site := startCaddy(t, paywallSite(p, ""))
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	if b.get(site.base+"/premium/a").StatusCode != http.StatusForbidden {
		t.Fatal("denied before buying")
	}
	p.set(withPlan("premium"))
	moveClock(t, deniedRefreshGap+time.Second)
	resp := b.get(site.base + "/premium/a")
	if resp.StatusCode != http.StatusOK || resp.body != "premium: premium" {
		t.Fatalf("after buying: %d %q", resp.StatusCode, resp.body)
	}
	// The new plan is in the placeholders of later requests too.
	if got := b.get(site.base + "/").body; !strings.HasSuffix(got, "plan=[premium]") {
		t.Fatalf("public page %q", got)
	}
}

// TestCancelledPlanIsNoticed: the plan claim disappears from userinfo when
// a subscription ends; the periodic refresh takes it away.
func TestCancelledPlanIsNoticed(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, paywallSite(p, "refresh_interval 10m"))
	b := newBrowser(t)
	signIn(t, site, b, "/premium/a")
	p.set(withPlan(""))
	moveClock(t, 11*time.Minute)
	if got := b.get(site.base + "/").body; !strings.HasSuffix(got, "plan=[]") {
		t.Fatalf("after cancellation: %q", got)
	}
	if b.get(site.base+"/premium/a").StatusCode != http.StatusForbidden {
		t.Fatal("cancelled plan still opens premium pages")
	}
}

// TestDeniedReaderCannotMakeTheSiteHammerPliro: a reader without the plan
// reloads a premium page again and again; userinfo is asked at most once
// per deniedRefreshGap.
func TestDeniedReaderCannotMakeTheSiteHammerPliro(t *testing.T) {
	p := newTestProvider(t)
	p.set(withPlan(""))
	site := startCaddy(t, paywallSite(p, ""))
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	for range 20 {
		b.get(site.base + "/premium/a")
	}
	if n := p.userinfoCalls.Load(); n != 1 {
		t.Fatalf("userinfo called %d times for 20 denied requests, want 1", n)
	}
}

// TestUserinfoForAnotherCustomerIsIgnored: a userinfo response whose sub is
// not the session's (a mixed-up or malicious response) must not change who
// the customer is or what they may read (OIDC Core §5.3.2).
func TestUserinfoForAnotherCustomerIsIgnored(t *testing.T) {
	p := newTestProvider(t)
	p.set(withPlan(""))
	site := startCaddy(t, paywallSite(p, ""))
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	p.set(func(p *testProvider) {
		for token := range p.accessTokens {
			p.accessTokens[token] = "cus_somebody_else"
		}
	})
	p.set(withPlan("premium"))
	moveClock(t, deniedRefreshGap+time.Second)
	if resp := b.get(site.base + "/premium/a"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("got %d %q, want 403", resp.StatusCode, resp.body)
	}
	if got := b.get(site.base + "/").body; !strings.HasPrefix(got, "public: ["+testSubject+"]") {
		t.Fatalf("identity changed: %q", got)
	}
}

// TestProviderDownKeepsTheSession: Pliro is unreachable at refresh time; the
// customer stays signed in with the last known claims.
func TestProviderDownKeepsTheSession(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, paywallSite(p, "refresh_interval 10m"))
	b := newBrowser(t)
	signIn(t, site, b, "/premium/a")
	p.down.Store(true)
	moveClock(t, time.Hour)
	if resp := b.get(site.base + "/premium/a"); resp.StatusCode != http.StatusOK {
		t.Fatalf("with Pliro down: %d %q", resp.StatusCode, resp.body)
	}
}

// TestSlowUserinfoDoesNotHoldTheReader: userinfo hangs; the reader's request
// waits at most userinfo_timeout.
func TestSlowUserinfoDoesNotHoldTheReader(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, paywallSite(p, "refresh_interval 10m\n\t\tuserinfo_timeout 300ms"))
	b := newBrowser(t)
	signIn(t, site, b, "/premium/a")
	p.set(func(p *testProvider) { p.userinfoDelay = 20 * time.Second })
	moveClock(t, time.Hour)
	start := time.Now()
	resp := b.get(site.base + "/premium/a")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("got %d", resp.StatusCode)
	}
	// Far from the 20s userinfo would take, with room for a loaded machine.
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("request took %s with userinfo_timeout 300ms", took)
	}
}

// TestExpiredAccessTokenTriggersSilentReauth: userinfo refuses the access
// token (Pliro issues no refresh tokens); the denied navigation goes to
// Pliro with prompt=none and comes back with fresh tokens and claims.
func TestExpiredAccessTokenTriggersSilentReauth(t *testing.T) {
	p := newTestProvider(t)
	p.set(withPlan(""))
	site := startCaddy(t, paywallSite(p, ""))
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	p.forgetAccessTokens()
	p.set(withPlan("premium"))
	moveClock(t, 2*time.Minute)
	rejected := testutil.ToFloat64(metrics.userinfo.WithLabelValues(resultTokenRejected))
	silent := testutil.ToFloat64(metrics.silentReauths.WithLabelValues(resultSuccess))
	resp, visited := b.navigate(site.base + "/premium/a")
	if resp.StatusCode != http.StatusOK || resp.body != "premium: premium" {
		t.Fatalf("got %d %q via %v", resp.StatusCode, resp.body, visited)
	}
	if p.lastAuthorize.Get("prompt") != "none" {
		t.Fatalf("re-authentication was not silent: %v", p.lastAuthorize)
	}
	if d := testutil.ToFloat64(metrics.userinfo.WithLabelValues(resultTokenRejected)) - rejected; d != 1 {
		t.Errorf("userinfo token_rejected moved by %v, want 1", d)
	}
	if d := testutil.ToFloat64(metrics.silentReauths.WithLabelValues(resultSuccess)) - silent; d != 1 {
		t.Errorf("silent re-authentication success moved by %v, want 1", d)
	}
}

// TestLoginRequiredEndsTheLocalSession: the customer signed out of Pliro
// (and no back-channel notification came); the periodic silent check finds
// out and the site signs them out too.
func TestLoginRequiredEndsTheLocalSession(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, paywallSite(p, "reauth_interval 1h"))
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	p.set(func(p *testProvider) { p.signedIn = false })
	restore := moveClock(t, 2*time.Hour)
	loginRequired := testutil.ToFloat64(metrics.silentReauths.WithLabelValues(resultLoginRequired))
	resp, visited := b.navigate(site.base + "/news")
	if d := testutil.ToFloat64(metrics.silentReauths.WithLabelValues(resultLoginRequired)) - loginRequired; d != 1 {
		t.Errorf("silent re-authentication login_required moved by %v, want 1", d)
	}
	if resp.body != "public: [] plan=[]" {
		t.Fatalf("got %q via %v", resp.body, visited)
	}
	if len(visited) != 4 || p.lastAuthorize.Get("prompt") != "none" {
		t.Fatalf("visited %v", visited)
	}
	// On a protected page the customer is then asked to sign in normally.
	restore()
	p.set(func(p *testProvider) { p.signedIn = true })
	signIn(t, site, b, "/members/a")
	if p.lastAuthorize.Get("prompt") != "" {
		t.Fatal("interactive sign-in sent prompt=none")
	}
}

// TestSilentRedirectsOnlyForTopLevelNavigations: a POST, an XHR, an iframe or
// an image must never be answered with a redirect to Pliro, however due a
// re-authentication is.
func TestSilentRedirectsOnlyForTopLevelNavigations(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, paywallSite(p, "reauth_interval 1h"))
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	moveClock(t, 2*time.Hour)
	for name, h := range map[string]http.Header{
		"iframe": {"Sec-Fetch-Mode": {"navigate"}, "Sec-Fetch-Dest": {"iframe"}, "Accept": {"text/html"}},
		"xhr":    {"X-Requested-With": {"XMLHttpRequest"}, "Accept": {"*/*"}},
		"fetch":  {"Sec-Fetch-Mode": {"cors"}, "Accept": {"*/*"}},
		"image":  {"Sec-Fetch-Mode": {"no-cors"}, "Sec-Fetch-Dest": {"image"}, "Accept": {"image/*"}},
	} {
		req, _ := http.NewRequest(http.MethodGet, site.base+"/members/a", nil)
		req.Header = h
		if resp := b.do(req); resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %d, want 200 without a redirect", name, resp.StatusCode)
		}
	}
	if resp := b.postForm(site.base+"/members/a", url.Values{"x": {"1"}}, site.base); resp.StatusCode != http.StatusOK {
		t.Errorf("POST: %d", resp.StatusCode)
	}
}

// TestSubscribeAndComeBack: a reader without the plan is sent to Pliro's
// offer page with continue_url; after buying, Pliro sends them back there
// and the article opens at once.
func TestSubscribeAndComeBack(t *testing.T) {
	p := newTestProvider(t)
	p.set(withPlan(""))
	site := startCaddy(t, paywallSite(p, ""))
	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	resp := b.get(site.base + "/offer/42")
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("denied navigation: %d %q", resp.StatusCode, resp.body)
	}
	to, _ := url.Parse(resp.Header.Get("Location"))
	if to.Host != strings.TrimPrefix(p.issuer, "http://") || to.Path != "/offers/premium/subscribe" || to.Query().Get("ref") != "site" {
		t.Fatalf("sent to %s", to)
	}
	continueTo := to.Query().Get("continue_url")
	if continueTo != site.base+"/offer/42?pliro_recheck=1" {
		t.Fatalf("continue_url %q", continueTo)
	}
	p.set(withPlan("premium")) // bought at Pliro, within the denied-refresh gap
	back, visited := b.navigate(continueTo)
	if back.StatusCode != http.StatusOK || back.body != "offer: premium" {
		t.Fatalf("after checkout: %d %q via %v", back.StatusCode, back.body, visited)
	}
	if got := back.Request.URL.RequestURI(); got != "/offer/42" {
		t.Fatalf("landed on %s, want the clean URL", got)
	}
}

func TestClaimRule(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, paywallSite(p, ""))
	reader := newBrowser(t)
	signIn(t, site, reader, "/members/a")
	if resp := reader.get(site.base + "/staff/x"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("reader on staff page: %d", resp.StatusCode)
	}
	p.set(func(p *testProvider) { p.customer["role"] = "editor" })
	editor := newBrowser(t)
	signIn(t, site, editor, "/staff/x")
}

// TestAutoSignInOnceNeverLoops: with auto_sign_in, an anonymous visitor
// signed in to Pliro is signed in silently on the first navigation; one who
// is not comes back anonymous and is not sent again.
func TestAutoSignInOnceNeverLoops(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, paywallSite(p, "auto_sign_in 1h"))

	// The first navigation only learns that the browser keeps cookies; the
	// second signs in.
	b := newBrowser(t)
	if resp, visited := b.navigate(site.base + "/news"); resp.body != "public: [] plan=[]" || len(visited) != 1 {
		t.Fatalf("first navigation: %q via %v", resp.body, visited)
	}
	resp, _ := b.navigate(site.base + "/news")
	if resp.body != "public: ["+testSubject+"] plan=[premium]" {
		t.Fatalf("signed in to Pliro: %q", resp.body)
	}

	p.set(func(p *testProvider) { p.signedIn = false })
	anon := newBrowser(t)
	anon.navigate(site.base + "/news")
	resp, visited := anon.navigate(site.base + "/news")
	if resp.body != "public: [] plan=[]" || len(visited) != 4 {
		t.Fatalf("not signed in to Pliro: %q via %v", resp.body, visited)
	}
	for range 3 {
		if r := anon.get(site.base + "/news"); r.StatusCode != http.StatusOK {
			t.Fatalf("second navigation redirected again: %d", r.StatusCode)
		}
	}
	// Crawlers send no Fetch Metadata and are never redirected.
	req, _ := http.NewRequest(http.MethodGet, site.base+"/news", nil)
	req.Header.Set("Accept", "text/html")
	req.Header.Set("User-Agent", "Googlebot/2.1")
	if r := newBrowser(t).do(req); r.StatusCode != http.StatusOK {
		t.Fatalf("crawler redirected: %d", r.StatusCode)
	}
}
