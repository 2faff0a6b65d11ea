package pliro

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestProviderPooledBySettings: a reload provisions a new handler; it gets
// the provider of the previous config exactly when none of the settings a
// provider is made of changed. A provider kept across a change of issuer,
// client, PKCE, clock skew, timeout or pinned key would verify tokens, or
// send customers, by the old settings.
func TestProviderPooledBySettings(t *testing.T) {
	pemA, pemB := writePublicKeyPEM(t), writePublicKeyPEM(t)
	copyOfA := filepath.Join(t.TempDir(), "copy.pem")
	if b, err := os.ReadFile(pemA); err != nil || os.WriteFile(copyOfA, b, 0o600) != nil {
		t.Fatal("copying the PEM file")
	}
	for _, tc := range []struct {
		name        string
		before      func(h *Handler) // the loaded config, besides unitConfig
		after       func(h *Handler) // the reloaded one
		wantSameOne bool
	}{
		{"same config", nil, nil, true},
		{"unrelated settings changed", nil, func(h *Handler) {
			h.IdleTimeout = caddy.Duration(time.Hour)
			h.SignInPath = "/login"
			h.CookieName = "other"
		}, true},
		{"issuer", nil, func(h *Handler) { h.Issuer = "https://other.plirotest.page" }, false},
		{"client_id", nil, func(h *Handler) { h.ClientID = "other-client" }, false},
		{"pkce", nil, func(h *Handler) { h.PKCE = "on" }, false},
		{"clock_skew", nil, func(h *Handler) { h.ClockSkew = caddy.Duration(2 * time.Minute) }, false},
		{"provider_timeout", nil, func(h *Handler) { h.ProviderTimeout = caddy.Duration(5 * time.Second) }, false},
		{"public_key_file added", nil, func(h *Handler) { h.PublicKeyFile = pemA }, false},
		{"public_key_file same contents elsewhere",
			func(h *Handler) { h.PublicKeyFile = pemA },
			func(h *Handler) { h.PublicKeyFile = copyOfA }, true},
		{"public_key_file other key",
			func(h *Handler) { h.PublicKeyFile = pemA },
			func(h *Handler) { h.PublicKeyFile = pemB }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old, reloaded := unitConfig(), unitConfig()
			if tc.before != nil {
				tc.before(&old)
				tc.before(&reloaded)
			}
			if tc.after != nil {
				tc.after(&reloaded)
			}
			mustProvisionUnit(t, &old)
			mustProvisionUnit(t, &reloaded)
			if same := old.provider == reloaded.provider; same != tc.wantSameOne {
				t.Fatalf("same provider after the reload: %v, want %v", same, tc.wantSameOne)
			}
			// Whichever it is, it has the reloaded config's settings.
			p := reloaded.provider
			if p.issuer != reloaded.Issuer || p.clientID != reloaded.ClientID || p.pkce != reloaded.PKCE ||
				p.clockSkew != time.Duration(reloaded.ClockSkew) || p.timeout != time.Duration(reloaded.ProviderTimeout) ||
				p.client == nil || p.client.Timeout != p.timeout {
				t.Fatalf("provider %+v does not match the config", p)
			}
		})
	}
}

// TestProviderReleasedByLastConfig: the pool entry lives while a config
// uses it, and goes with the last one, so a later config (or a restart)
// starts from scratch.
func TestProviderReleasedByLastConfig(t *testing.T) {
	old, reloaded := unitConfig(), unitConfig()
	mustProvisionUnit(t, &old)
	mustProvisionUnit(t, &reloaded)
	key := old.providerKey
	if refs, ok := providerPool.References(key); !ok || refs != 2 {
		t.Fatalf("%d references (present %v), want 2", refs, ok)
	}
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if refs, _ := providerPool.References(key); refs != 1 {
		t.Fatalf("%d references after one cleanup, want 1", refs)
	}
	if err := reloaded.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, ok := providerPool.References(key); ok {
		t.Fatal("the provider outlived the last config")
	}
}

// TestProviderSurvivesReload: `caddy reload` is routine. The first
// protected request after it must not wait for discovery and the JWKS
// again, unless the reload changed the provider's settings.
func TestProviderSurvivesReload(t *testing.T) {
	for _, tc := range []struct {
		name, reloadWith string
		// In all. A kept provider fetches discovery once more, in the
		// background (TestReloadRediscovers), but not the JWKS.
		wantDiscovery, wantJWKS int32
	}{
		{"same config", "", 2, 1},
		{"unrelated change", "idle_timeout 30d", 2, 1},
		{"provider_timeout changed", "provider_timeout 5s", 2, 2},
		{"clock_skew changed", "clock_skew 2m", 2, 2},
		{"pkce changed", "pkce on", 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProvider(t)
			site := startCaddy(t, siteFor(p, ""))
			signIn(t, site, newBrowser(t), "/members/a")
			requireFetches(t, p, 1, 1)

			site.load(siteFor(p, tc.reloadWith))
			signIn(t, site, newBrowser(t), "/members/b")
			waitRediscoveries(t)
			requireFetches(t, p, tc.wantDiscovery, tc.wantJWKS)
		})
	}
	t.Run("issuer changed", func(t *testing.T) {
		first, second := newTestProvider(t), newTestProvider(t)
		site := startCaddy(t, siteFor(first, ""))
		signIn(t, site, newBrowser(t), "/members/a")
		// signIn succeeds only with the second provider's endpoints and
		// key: the first one's are gone with its settings.
		site.load(siteFor(second, ""))
		signIn(t, site, newBrowser(t), "/members/b")
		requireFetches(t, first, 1, 1)
		requireFetches(t, second, 1, 1)
	})
}

// TestJWKSRefetchLimitSurvivesReload: somebody sends ID tokens with key IDs
// Pliro never had. Each may refetch the JWKS at most once per
// jwksMinRefetch; reloads in between must not reset that limit, or every
// reload would let one more fetch through.
func TestJWKSRefetchLimitSurvivesReload(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	signIn(t, site, newBrowser(t), "/members/a")
	p.set(func(p *testProvider) {
		p.mutateIDToken = func(header, _ map[string]any) { header["kid"] = "never-published" }
	})
	for range 3 {
		site.load(siteFor(p, ""))
		expectSignInFails(t, site, newBrowser(t), http.StatusBadGateway)
		// The rediscovery after each reload finds the same JWKS, and
		// keeps its key set, limiter included.
		waitRediscoveries(t)
	}
	requireFetches(t, p, 4, 1)
}

// TestProviderRecoversAfterReload: Pliro is down when Caddy starts, so the
// first protected request fails and discovery backs off. The operator brings
// Pliro back and reloads: the pooled provider must try again at once, not
// keep its failure (or its backoff) from before the reload.
func TestProviderRecoversAfterReload(t *testing.T) {
	p := newTestProvider(t)
	p.down.Store(true)
	site := startCaddy(t, siteFor(p, ""))
	expectSignInFails(t, site, newBrowser(t), http.StatusBadGateway)

	p.down.Store(false)
	site.load(siteFor(p, ""))
	signIn(t, site, newBrowser(t), "/members/a")
	requireFetches(t, p, 1, 1)
}

// TestReloadRediscovers: Pliro's discovery document changed (here: it now
// advertises PKCE S256, and `pkce auto` is to send it). A reload that keeps
// the provider must pick that up, as a restart would, without making a
// request wait for discovery, and keep the JWKS it has.
func TestReloadRediscovers(t *testing.T) {
	p := newTestProvider(t)
	p.set(func(p *testProvider) { p.advertisePKCE = false })
	site := startCaddy(t, siteFor(p, ""))
	signIn(t, site, newBrowser(t), "/members/a")
	if c := lastChallenge(p); c != "" {
		t.Fatalf("PKCE sent (%q) though not advertised", c)
	}

	p.set(func(p *testProvider) { p.advertisePKCE = true })
	site.load(siteFor(p, ""))
	waitRediscoveries(t)
	signIn(t, site, newBrowser(t), "/members/b")
	if lastChallenge(p) == "" {
		t.Fatal("no PKCE after a reload, though Pliro now advertises S256")
	}
	requireFetches(t, p, 2, 1)
}

// TestReloadWhilePliroDownKeepsEndpoints: the rediscovery after a reload
// fails (Pliro is down for a moment); the endpoints learned before still
// work, and are kept rather than learned again on the next request.
func TestReloadWhilePliroDownKeepsEndpoints(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	signIn(t, site, newBrowser(t), "/members/a")

	p.down.Store(true)
	site.load(siteFor(p, ""))
	waitRediscoveries(t)
	p.down.Store(false)
	signIn(t, site, newBrowser(t), "/members/b")
	// The failed rediscovery was answered 503 before it was counted.
	requireFetches(t, p, 1, 1)
}

func lastChallenge(p *testProvider) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastAuthorize.Get("code_challenge")
}

// waitRediscoveries waits until no pooled provider is rediscovering. A
// reload marks the provider before it returns, so one started by a reload
// has ended.
func waitRediscoveries(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		busy := false
		providerPool.Range(func(_, v any) bool {
			p := v.(*provider)
			p.bgMu.Lock()
			busy = busy || p.rediscovering
			p.bgMu.Unlock()
			return !busy
		})
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a rediscovery is still running")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// discoveryDoc is a provider whose discovery document the test changes; it
// counts fetches, and the most at once, and may hold them at a gate.
type discoveryDoc struct {
	srv *httptest.Server

	mu        sync.Mutex
	token     string // path of the token endpoint
	jwks      string // path of the JWKS
	pkce      bool
	fetches   int
	inFlight  int
	maxFlight int
	gate      chan struct{} // when set, fetches wait for it to close
}

func newDiscoveryDoc(t *testing.T) *discoveryDoc {
	d := &discoveryDoc{token: "/oauth/token", jwks: "/oauth/discovery/keys"}
	d.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		d.fetches++
		d.inFlight++
		d.maxFlight = max(d.maxFlight, d.inFlight)
		gate := d.gate
		doc := map[string]any{
			"issuer":                                d.srv.URL,
			"authorization_endpoint":                d.srv.URL + "/oauth/authorize",
			"token_endpoint":                        d.srv.URL + d.token,
			"jwks_uri":                              d.srv.URL + d.jwks,
			"id_token_signing_alg_values_supported": []string{"ES256"},
		}
		if d.pkce {
			doc["code_challenge_methods_supported"] = []string{"S256"}
		}
		d.mu.Unlock()
		defer func() {
			d.mu.Lock()
			d.inFlight--
			d.mu.Unlock()
		}()
		if gate != nil {
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		writeJSON(w, doc)
	}))
	t.Cleanup(d.srv.Close)
	return d
}

func (d *discoveryDoc) set(f func(d *discoveryDoc)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d)
}

// reload provisions one more config with the provider's settings, as a
// reload does, and releases it when the test ends.
func (d *discoveryDoc) reload(t *testing.T) *provider {
	t.Helper()
	p, key, err := loadProvider(&provider{issuer: d.srv.URL, clientID: "c", pkce: "auto", timeout: 5 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = providerPool.Delete(key) })
	return p
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestRediscoveryUpdatesEndpoints: what a reload's rediscovery finds
// replaces what the provider knew, field by field as the document says;
// the key set (with its cache and refetch limiter) is kept unless the
// jwks_uri changed.
func TestRediscoveryUpdatesEndpoints(t *testing.T) {
	d := newDiscoveryDoc(t)
	p := d.reload(t)
	first, err := p.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if first.pkce || first.token != d.srv.URL+"/oauth/token" {
		t.Fatalf("learned %+v", first)
	}

	// Nothing changed: the same endpoints stay.
	d.reload(t)
	waitFor(t, "the rediscovery", func() bool { return !p.isRediscovering() })
	if p.ready.Load() != first {
		t.Fatal("an unchanged document replaced the endpoints")
	}

	d.set(func(d *discoveryDoc) { d.token, d.pkce = "/oauth/v2/token", true })
	d.reload(t)
	waitFor(t, "the new token endpoint", func() bool { return p.ready.Load().token == d.srv.URL+"/oauth/v2/token" })
	second := p.ready.Load()
	if !second.pkce || second.keys != first.keys || second.idTokens != first.idTokens {
		t.Fatalf("after the rediscovery: pkce %v, same key set %v, same verifier %v, want true, true, true",
			second.pkce, second.keys == first.keys, second.idTokens == first.idTokens)
	}

	d.set(func(d *discoveryDoc) { d.jwks = "/oauth/v2/keys" })
	d.reload(t)
	waitFor(t, "the new JWKS", func() bool { return p.ready.Load().jwksURL == d.srv.URL+"/oauth/v2/keys" })
	third := p.ready.Load()
	if k, ok := third.keys.(*remoteKeys); !ok || k == second.keys || k.url != third.jwksURL || third.idTokens == second.idTokens {
		t.Fatalf("the key set %#v is not a new one from %s", third.keys, third.jwksURL)
	}
}

// TestRediscoveryOneAtATime: many reloads while Pliro is slow start one
// rediscovery, not one each; it ends with the provider (Destruct waits
// for it), and stores nothing after.
func TestRediscoveryOneAtATime(t *testing.T) {
	d := newDiscoveryDoc(t)
	p, key, err := loadProvider(&provider{issuer: d.srv.URL, clientID: "c", pkce: "auto", timeout: 5 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	first, err := p.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	t.Cleanup(func() { close(gate) })
	d.set(func(d *discoveryDoc) { d.gate, d.token = gate, "/oauth/v2/token" })
	var keys []string
	for range 5 {
		_, k, err := loadProvider(&provider{issuer: d.srv.URL, clientID: "c", pkce: "auto", timeout: 5 * time.Second}, nil)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	waitFor(t, "the rediscovery to reach Pliro", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.fetches == 2
	})
	time.Sleep(100 * time.Millisecond) // would any other start
	d.mu.Lock()
	fetches, most := d.fetches, d.maxFlight
	d.mu.Unlock()
	if fetches != 2 || most != 1 {
		t.Fatalf("%d discovery fetches, at most %d at once; want 2 and 1", fetches, most)
	}

	// The last config goes while the rediscovery waits: it ends at once
	// (not after provider_timeout), and the endpoints stay as they were.
	start := time.Now()
	for _, k := range append(keys, key) {
		if _, err := providerPool.Delete(k); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := providerPool.References(key); ok {
		t.Fatal("the provider outlived its configs")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Destruct took %s", d)
	}
	if p.isRediscovering() || p.ready.Load() != first {
		t.Fatal("the rediscovery outlived the provider")
	}
	// And none starts on a destructed provider.
	p.rediscover()
	if p.isRediscovering() {
		t.Fatal("a rediscovery started after Destruct")
	}
}

func (p *provider) isRediscovering() bool {
	p.bgMu.Lock()
	defer p.bgMu.Unlock()
	return p.rediscovering
}

func requireFetches(t *testing.T, p *testProvider, discovery, jwks int32) {
	t.Helper()
	if d, j := p.discoveryFetches.Load(), p.jwksFetches.Load(); d != discovery || j != jwks {
		t.Fatalf("discovery fetched %d times and JWKS %d times, want %d and %d", d, j, discovery, jwks)
	}
}

// writePublicKeyPEM writes a new P-256 public key as a PEM file.
func writePublicKeyPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return writePEMFile(t, &key.PublicKey)
}
