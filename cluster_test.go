package pliro

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// clusterSites runs two Caddy "instances" of one site sharing one Redis.
// They run in one process here, so each gets its own Redis store object
// (a different dial_timeout makes a different pool entry), with its own
// local cache and subscription, as two processes would have.
func clusterSites(t *testing.T, p *testProvider, redisAddr string) (a, b *testSite) {
	t.Helper()
	// Both instances serve one site: one registered redirect URI.
	ports := []int{freePort(t), freePort(t)}
	body := func(dial string) string {
		return fmt.Sprintf(`
	pliro {
		issuer %s
		client_id %s
		client_secret {env.PLIRO_TEST_SECRET}
		redirect_uri http://localhost:%d/callback
		store redis %s {
			dial_timeout %s
			local_cache_ttl 1s
		}
	}
	pliro_require /members/*
	respond /members/* "members: {http.auth.user.id}"
	respond "public: [{http.auth.user.id}]"
`, p.issuer, p.clientID, ports[0], redisAddr, dial)
	}
	sites := startCaddySites(t, ports, body("2s"), body("3s"))
	return sites[0], sites[1]
}

func TestClusterSignInOnOneInstanceWorksOnTheOther(t *testing.T) {
	redis := startTestRedis(t)
	p := newTestProvider(t)
	a, b := clusterSites(t, p, redis.addr)
	browser := newBrowser(t)
	signIn(t, a, browser, "/members/1")
	if resp := browser.get(b.base + "/members/1"); resp.StatusCode != http.StatusOK || resp.body != "members: "+testSubject {
		t.Fatalf("instance B: %d %q", resp.StatusCode, resp.body)
	}
	// A sign-in started on A finishes on B (the load balancer sent the
	// callback there): the sealing key is shared.
	other := newBrowser(t)
	first := other.get(a.base + "/members/2")
	callback, _ := url.Parse(other.get(first.Header.Get("Location")).Header.Get("Location"))
	onB := b.base + callback.RequestURI()
	if resp := other.get(onB); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("callback on B for a sign-in started on A: %d %q", resp.StatusCode, resp.body)
	}
}

// TestClusterLogoutReachesEveryInstance: a back-channel notification handled
// by B, or a sign-out on A, ends the session on the other instance within a
// second (at once here: the invalidation travels by pub/sub).
func TestClusterLogoutReachesEveryInstance(t *testing.T) {
	redis := startTestRedis(t)
	p := newTestProvider(t)
	a, b := clusterSites(t, p, redis.addr)

	browser := newBrowser(t)
	signIn(t, a, browser, "/members/1")
	browser.get(a.base + "/") // A's local cache holds the session now
	form := url.Values{"logout_token": {p.logoutToken(nil)}}
	if resp := browser.postForm(b.base+"/backchannel-logout", form, ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("back-channel logout on B: %d %q", resp.StatusCode, resp.body)
	}
	waitAnonymous(t, browser, a)

	p.endSession()
	signIn(t, b, browser, "/members/1")
	browser.get(b.base + "/")
	// A copy of the cookie, made before the sign-out clears it from the jar.
	u, _ := url.Parse(b.base)
	thief := newBrowser(t)
	thief.jar.SetCookies(u, browser.jar.Cookies(u))
	if resp := browser.postForm(a.base+"/sign-out", nil, a.base); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-out on A: %d", resp.StatusCode)
	}
	waitAnonymous(t, thief, b)
}

// waitAnonymous asserts the instance sees the browser as anonymous within
// one second.
func waitAnonymous(t *testing.T, b *browser, site *testSite) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		got := b.get(site.base + "/").body
		if got == "public: []" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %q on %s after one second", got, site.base)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedisOutage: while Redis is down, protected pages answer 503 with
// Retry-After and public pages serve an anonymous visitor; when Redis is
// back, the signed-in customer is signed in again, nothing lost.
func TestRedisOutage(t *testing.T) {
	redis := startTestRedis(t)
	p := newTestProvider(t)
	a, _ := clusterSites(t, p, redis.addr)
	browser := newBrowser(t)
	signIn(t, a, browser, "/members/1")

	redis.pause()
	defer redis.resume()
	time.Sleep(1100 * time.Millisecond) // past the local cache
	start := time.Now()
	resp := browser.get(a.base + "/members/1")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("protected page with Redis down: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("protected page took %s with Redis down", took)
	}
	if got := browser.get(a.base + "/").body; got != "public: []" {
		t.Fatalf("public page with Redis down: %q", got)
	}
	redis.resume()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp := browser.get(a.base + "/members/1")
		if resp.StatusCode == http.StatusOK && strings.Contains(resp.body, testSubject) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not recovered after Redis came back: %d %q", resp.StatusCode, resp.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
