package pliro

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"os"
	"path/filepath"
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
		wantFetches      int32 // of discovery and of the JWKS, in all
	}{
		{"same config", "", 1},
		{"unrelated change", "idle_timeout 30d", 1},
		{"provider_timeout changed", "provider_timeout 5s", 2},
		{"clock_skew changed", "clock_skew 2m", 2},
		{"pkce changed", "pkce on", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProvider(t)
			site := startCaddy(t, siteFor(p, ""))
			signIn(t, site, newBrowser(t), "/members/a")
			requireFetches(t, p, 1, 1)

			site.load(siteFor(p, tc.reloadWith))
			signIn(t, site, newBrowser(t), "/members/b")
			requireFetches(t, p, tc.wantFetches, tc.wantFetches)
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
	}
	requireFetches(t, p, 1, 1)
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
