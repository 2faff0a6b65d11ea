package pliro

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The cluster tests in cluster_test.go run two instances as two sites of one
// in-process Caddy. This one runs the real thing: two `caddy run` processes,
// each with its own data directory, sharing nothing but one redis-server.

const (
	// clusterProcessPrefix is the key_prefix both processes use.
	clusterProcessPrefix = "pliro-proc:"
	// clusterProcessCacheTTL is their local_cache_ttl: the longest a
	// process could keep serving a session ended elsewhere if the
	// invalidation message never reached it.
	clusterProcessCacheTTL = time.Second
	// clusterProcessGrace is how long an invalidation message may take to
	// reach the other process (on loopback it takes a millisecond or so;
	// this leaves room for a loaded machine).
	clusterProcessGrace = 400 * time.Millisecond
)

// clusterProcess is one Caddy process of the cluster.
type clusterProcess struct {
	*caddyProcess
	site *testSite
}

// startClusterProcess runs `caddy run` with the cluster's Caddyfile on port,
// in a directory (and so a Caddy storage) of its own. callbackPort is the
// port of the one registered redirect URI: the instances serve one site.
func startClusterProcess(t *testing.T, p *testProvider, redisAddr string, port, callbackPort int) *clusterProcess {
	t.Helper()
	dir := t.TempDir()
	config := filepath.Join(dir, "Caddyfile")
	extra := fmt.Sprintf(`redirect_uri http://localhost:%d/callback
		store redis %s {
			key_prefix %s
			local_cache_ttl %s
		}`, callbackPort, redisAddr, clusterProcessPrefix, clusterProcessCacheTTL)
	body := fmt.Sprintf(`{
	admin off
	auto_https off
	storage file_system %s
}
http://localhost:%d {
%s
}
`, filepath.Join(dir, "storage"), port, siteFor(p, extra))
	if err := os.WriteFile(config, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	proc := startCaddyProcess(t, config, port)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := os.ReadFile(proc.logFile)
			t.Logf("log of the Caddy process on port %d:\n%s", port, out)
		}
	})
	return &clusterProcess{
		caddyProcess: proc,
		site:         &testSite{t: t, port: port, base: fmt.Sprintf("http://localhost:%d", port)},
	}
}

// waitClusterSubscribers waits until n processes listen on the invalidation
// channel (each subscribes on its first use of the store), so that their
// local caches are in use and the checks below test the invalidation.
func waitClusterSubscribers(t *testing.T, redisAddr string, n int64) {
	t.Helper()
	c := rawRedis(t, redisAddr)
	channel := clusterProcessPrefix + "invalidate"
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		got, err := c.PubSubNumSub(ctx, channel).Result()
		cancel()
		if err == nil && got[channel] == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d subscribers of %s, want %d (%v)", got[channel], channel, n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// requireEndsBeforeCacheExpiry checks that end (run on another process)
// ends b's session on site before site's cached copy could have expired by
// itself: only the invalidation message published through Redis can do
// that. It first puts the session in site's local cache, then fails if site
// still serves the session to a request sent clusterProcessGrace after end,
// while the cached copy could still be in use. It reports false when the
// machine was too slow to tell the message from the expiry (end, or the
// requests, took most of the cache TTL); the session must end all the same,
// within a generous deadline.
func requireEndsBeforeCacheExpiry(t *testing.T, site *testSite, b *browser, end func()) bool {
	t.Helper()
	// The entry is cached by one of these two reads, so it is used until
	// warmed + TTL at least.
	warmed := time.Now()
	requireSessionAlive(t, site, b)
	requireSessionAlive(t, site, b)
	end()
	ended := time.Now()
	cached := warmed.Add(clusterProcessCacheTTL - 20*time.Millisecond)
	deadline := ended.Add(5 * time.Second)
	for {
		sent := time.Now()
		resp := membersPage(t, site, b)
		answered := time.Now()
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			return answered.Before(cached)
		case http.StatusOK:
			if sent.After(ended.Add(clusterProcessGrace)) && answered.Before(cached) {
				t.Fatalf("on %s a session ended elsewhere %s before is still served from the local cache "+
					"(filled %s before, local_cache_ttl %s): the invalidation did not arrive",
					site.base, sent.Sub(ended).Round(time.Millisecond), sent.Sub(warmed).Round(time.Millisecond), clusterProcessCacheTTL)
			}
			if answered.After(deadline) {
				t.Fatalf("on %s a session ended elsewhere %s before still works", site.base, answered.Sub(ended).Round(time.Millisecond))
			}
		default:
			t.Fatalf("members page on %s answered %d %q", site.base, resp.StatusCode, resp.body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// repeatUntilConclusive runs round (which signs a customer in and calls
// requireEndsBeforeCacheExpiry) until it could tell the invalidation message
// from the cache expiry, at most three times: a loaded machine can make one
// round too slow to tell.
func repeatUntilConclusive(t *testing.T, what string, round func() bool) {
	t.Helper()
	for attempt := 1; attempt <= 3; attempt++ {
		if round() {
			return
		}
		t.Logf("%s: attempt %d too slow to tell the invalidation from the cache expiry", what, attempt)
	}
	t.Logf("%s: the session ended, but this machine was too slow to show it was the invalidation", what)
}

// TestClusterOfTwoProcesses: two Caddy processes behind a load balancer,
// one Redis. Whichever process a request reaches, the customer is signed in
// or out alike, and a restart of one process changes nothing.
func TestClusterOfTwoProcesses(t *testing.T) {
	redis := startTestRedis(t)
	p := newTestProvider(t)
	portA, portB := freePort(t), freePort(t)
	a := startClusterProcess(t, p, redis.addr, portA, portA)
	b := startClusterProcess(t, p, redis.addr, portB, portA)
	want := "members: id=" + testSubject + " email=reader@example.com name=Rita Reader plan=premium slugs=premium sid=" + testProviderSID

	// Signed in on A, signed in on B with the same cookie.
	customer := newBrowser(t)
	signIn(t, a.site, customer, "/members/a")
	cookie := customer.cookie(a.site.base, defaultCookieName)
	if cookie == "" {
		t.Fatal("no session cookie after sign-in on A")
	}
	if resp := customer.get(b.site.base + "/members/b"); resp.StatusCode != http.StatusOK || resp.body != want {
		t.Fatalf("process B for the customer signed in on A: %d %q", resp.StatusCode, resp.body)
	}
	if got := customer.cookie(b.site.base, defaultCookieName); got != cookie {
		t.Fatalf("process B replaced the session cookie")
	}
	waitClusterSubscribers(t, redis.addr, 2)

	// A sign-in started on A finishes on B (the load balancer sent the
	// callback there): both processes seal sign-in cookies with one key.
	{
		other := newBrowser(t)
		callback := startSignInOn(t, a.site, other, "/members/started-on-a")
		resp := other.get(b.site.base + callback.RequestURI())
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/members/started-on-a" {
			t.Fatalf("callback on B for a sign-in started on A: %d to %q %q", resp.StatusCode, resp.Header.Get("Location"), resp.body)
		}
		requireSessionAlive(t, a.site, other)
		requireSessionAlive(t, b.site, other)
	}

	// Sign-out on B: a copy of the cookie, cached on A a moment ago, stops
	// working on A at once.
	{
		repeatUntilConclusive(t, "sign-out", func() bool {
			victim, thief := newBrowser(t), newBrowser(t)
			signIn(t, a.site, victim, "/members/x")
			copyCookies(a.site, victim, thief)
			return requireEndsBeforeCacheExpiry(t, a.site, thief, func() {
				if resp := signOut(t, b.site, victim, nil); resp.StatusCode != http.StatusSeeOther {
					t.Fatalf("sign-out on B: %d %q", resp.StatusCode, resp.body)
				}
			})
		})
		requireSessionAlive(t, a.site, customer) // only that session ended
		requireSessionAlive(t, b.site, customer)
	}

	// A logout token posted to A ends the session on B; replayed to B, it
	// is refused: the replay cache is shared. Each round signs in with a
	// Pliro session (sid) of its own, since an ended one cannot sign in
	// again, and the customer's session, with another sid, lives on.
	{
		var token string
		round := 0
		repeatUntilConclusive(t, "back-channel logout", func() bool {
			round++
			sid := fmt.Sprintf("sid_backchannel_%d", round)
			p.set(func(p *testProvider) { p.customer["sid"] = sid })
			defer p.set(func(p *testProvider) { p.customer["sid"] = testProviderSID })
			reader := newBrowser(t)
			signIn(t, a.site, reader, "/members/y")
			token = p.logoutToken(func(_, claims map[string]any) { claims["sid"] = sid })
			return requireEndsBeforeCacheExpiry(t, b.site, reader, func() {
				requireLogoutAccepted(t, postLogoutToken(t, a.site, token))
			})
		})
		requireLogoutRefused(t, postLogoutToken(t, b.site, token), http.StatusBadRequest, "replayed")
		requireSessionAlive(t, a.site, customer)
		requireSessionAlive(t, b.site, customer)
	}

	// A restart of A (an upgrade, one process at a time): B serves the
	// customer meanwhile, the restarted A knows them, and a sign-in A
	// started before it stopped finishes on the new A.
	{
		requireSessionAlive(t, a.site, customer)
		pending := newBrowser(t)
		callback := startSignInOn(t, a.site, pending, "/members/across-restart")

		a.stop()
		requireSessionAlive(t, b.site, customer)
		a.start()
		if resp := customer.get(a.site.base + "/members/a"); resp.StatusCode != http.StatusOK || resp.body != want {
			t.Fatalf("restarted process A for the signed-in customer: %d %q", resp.StatusCode, resp.body)
		}
		if got := customer.cookie(a.site.base, defaultCookieName); got != cookie {
			t.Fatalf("restarted process A replaced the session cookie")
		}
		resp := pending.get(callback.String())
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/members/across-restart" {
			t.Fatalf("callback on the restarted A for a sign-in started before: %d to %q %q", resp.StatusCode, resp.Header.Get("Location"), resp.body)
		}
		requireSessionAlive(t, b.site, pending)

		// The new A listens for invalidations too: a sign-out on B
		// reaches it.
		waitClusterSubscribers(t, redis.addr, 2)
		repeatUntilConclusive(t, "sign-out after the restart", func() bool {
			victim, thief := newBrowser(t), newBrowser(t)
			signIn(t, a.site, victim, "/members/z")
			copyCookies(a.site, victim, thief)
			return requireEndsBeforeCacheExpiry(t, a.site, thief, func() {
				if resp := signOut(t, b.site, victim, nil); resp.StatusCode != http.StatusSeeOther {
					t.Fatalf("sign-out on B: %d %q", resp.StatusCode, resp.body)
				}
			})
		})
		requireSessionAlive(t, a.site, customer)
	}
}

// startSignInOn starts a sign-in from a protected page of site and returns
// the callback URL the provider sends the browser to, not yet visited: the
// browser holds the sign-in cookie site set.
func startSignInOn(t *testing.T, site *testSite, b *browser, path string) *url.URL {
	t.Helper()
	first := b.get(site.base + path)
	if first.StatusCode != http.StatusSeeOther && first.StatusCode != http.StatusFound {
		t.Fatalf("protected page %s: %d %q, want a redirect to the provider", path, first.StatusCode, first.body)
	}
	authorize := b.get(first.Header.Get("Location"))
	callback, err := url.Parse(authorize.Header.Get("Location"))
	if err != nil || !strings.HasSuffix(callback.Path, "/callback") || callback.Query().Get("code") == "" {
		t.Fatalf("the provider sent the browser to %q (%v)", authorize.Header.Get("Location"), err)
	}
	return callback
}
