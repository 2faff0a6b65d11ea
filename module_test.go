package pliro

import (
	"context"
	"crypto/elliptic"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/oauth2"
)

// unitConfig is the smallest valid configuration.
func unitConfig() Handler {
	return Handler{
		Issuer:       "https://news.plirotest.page",
		ClientID:     "news-web",
		ClientSecret: "literal-test-secret",
	}
}

// provisionUnit provisions and validates h as Caddy would, and cleans it up
// when the test ends, also after a failed provision.
//
// The context is the bare one of Caddy's own unit tests: no config, so no
// storage, apps or admin API.
func provisionUnit(t testing.TB, h *Handler) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(func() {
		if err := h.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		cancel()
	})
	if err := provisionNoPanic(h, ctx); err != nil {
		return err
	}
	return h.Validate()
}

// provisionNoPanic turns a panic in Provision into a test failure, so that
// it does not take the whole package's test run down with it.
func provisionNoPanic(h *Handler, ctx caddy.Context) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("provision panicked with a bare caddy.Context (no config, no storage): %v", p)
		}
	}()
	return h.Provision(ctx)
}

// mustProvisionUnit is provisionUnit for a config that must be valid.
func mustProvisionUnit(t testing.TB, h *Handler) *Handler {
	t.Helper()
	if err := provisionUnit(t, h); err != nil {
		t.Fatalf("provisioning: %v", err)
	}
	return h
}

func TestProvisionFillsDefaults(t *testing.T) {
	h := unitConfig()
	mustProvisionUnit(t, &h)

	// The documented defaults (field docs in module.go).
	for _, c := range []struct {
		field     string
		got, want any
	}{
		{"scopes", h.Scopes, []string{"openid", "email", "profile"}},
		{"pkce", h.PKCE, "auto"},
		{"token_auth_method", h.TokenAuthMethod, "client_secret_basic"},
		{"redirect_uri", h.RedirectURI, "/callback"},
		{"callback path", h.callbackPath, "/callback"},
		{"sign_in_path", h.SignInPath, "/sign-in"},
		{"sign_out_path", h.SignOutPath, "/sign-out"},
		{"backchannel_logout_path", h.BackchannelLogoutPath, "/backchannel-logout"},
		{"cookie_name", h.CookieName, "pliro_session"},
		{"idle_timeout", time.Duration(h.IdleTimeout), 14 * 24 * time.Hour},
		{"max_lifetime", time.Duration(h.MaxLifetime), 90 * 24 * time.Hour},
		{"clock_skew", time.Duration(h.ClockSkew), time.Minute},
		{"logout_token_max_age", time.Duration(h.LogoutTokenMaxAge), 5 * time.Minute},
		{"refresh_interval", time.Duration(h.RefreshInterval), 15 * time.Minute},
		{"userinfo_timeout", time.Duration(h.UserinfoTimeout), 3 * time.Second},
		// Silent re-authentication and auto sign-in are off unless asked for.
		{"reauth_interval", time.Duration(h.ReauthInterval), time.Duration(0)},
		{"auto_sign_in", time.Duration(h.AutoSignIn), time.Duration(0)},
		{"post_logout_redirect_uri", h.PostLogoutRedirectURI, "/"},
		{"sign_out_redirect", h.SignOutRedirect, "/"},
		// No identity headers unless asked for.
		{"identity_header_prefix", h.IdentityHeaderPrefix, ""},
		// Sign-out also ends the Pliro session.
		{"end_provider_session", h.endProviderSession(), true},
		// Pliro's documented client authentication: HTTP Basic.
		{"auth style", h.authStyle(), oauth2.AuthStyleInHeader},
		{"client secret", h.clientSecret, "literal-test-secret"},
	} {
		if fmt.Sprint(c.got) != fmt.Sprint(c.want) {
			t.Errorf("%s: got %v, want %v", c.field, c.got, c.want)
		}
	}
	if h.store == nil || h.keys == nil || h.provider == nil || h.logger == nil {
		t.Fatal("store, sealing keys, provider and logger must be set")
	}
	if h.provider.ready.Load() != nil {
		t.Error("the provider was discovered during Provision")
	}
}

func TestProvisionNormalizes(t *testing.T) {
	t.Run("issuer trailing slash trimmed", func(t *testing.T) {
		h := unitConfig()
		h.Issuer = "https://news.plirotest.page/"
		mustProvisionUnit(t, &h)
		// The ID token's iss must equal the issuer exactly (OIDC Core
		// §3.1.3.7 step 2); Pliro's has no trailing slash.
		if h.Issuer != "https://news.plirotest.page" || h.provider.issuer != h.Issuer {
			t.Errorf("issuer %q, provider issuer %q", h.Issuer, h.provider.issuer)
		}
	})
	t.Run("issuer from an env placeholder", func(t *testing.T) {
		t.Setenv("PLIRO_UNIT_ISSUER", "https://account.example-news.com/")
		h := unitConfig()
		h.Issuer = "{env.PLIRO_UNIT_ISSUER}"
		mustProvisionUnit(t, &h)
		if h.Issuer != "https://account.example-news.com" || h.provider.issuer != h.Issuer {
			t.Errorf("issuer %q, provider issuer %q", h.Issuer, h.provider.issuer)
		}
	})
	t.Run("openid scope added when missing", func(t *testing.T) {
		h := unitConfig()
		h.Scopes = []string{"email", "profile"}
		mustProvisionUnit(t, &h)
		if !slices.Equal(h.Scopes, []string{"openid", "email", "profile"}) {
			t.Errorf("scopes %v", h.Scopes)
		}
	})
	t.Run("openid scope not doubled", func(t *testing.T) {
		h := unitConfig()
		h.Scopes = []string{"email", "openid"}
		mustProvisionUnit(t, &h)
		if !slices.Equal(h.Scopes, []string{"email", "openid"}) {
			t.Errorf("scopes %v", h.Scopes)
		}
	})
	t.Run("absolute redirect_uri gives the callback path", func(t *testing.T) {
		h := unitConfig()
		h.RedirectURI = "https://www.example-news.com/auth/callback?from=pliro"
		mustProvisionUnit(t, &h)
		if h.callbackPath != "/auth/callback" {
			t.Errorf("callback path %q", h.callbackPath)
		}
	})
	t.Run("client_secret from an env placeholder", func(t *testing.T) {
		t.Setenv("PLIRO_UNIT_SECRET", "env-secret")
		t.Setenv("PLIRO_UNIT_CLIENT_ID", "env-client")
		h := unitConfig()
		h.ClientSecret = "{env.PLIRO_UNIT_SECRET}"
		h.ClientID = "{env.PLIRO_UNIT_CLIENT_ID}"
		mustProvisionUnit(t, &h)
		if h.clientSecret != "env-secret" || h.ClientID != "env-client" {
			t.Errorf("secret %q, client ID %q", h.clientSecret, h.ClientID)
		}
	})
	t.Run("client_secret from a file placeholder", func(t *testing.T) {
		path := writeUnitFile(t, "pliro_client_secret", []byte("file-secret\n"))
		h := unitConfig()
		h.ClientSecret = "{file." + path + "}"
		mustProvisionUnit(t, &h)
		if h.clientSecret != "file-secret" {
			t.Errorf("secret %q", h.clientSecret)
		}
		// The config keeps the placeholder: a dump of the handler's JSON
		// shows no secret.
		js, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(js), "file-secret") {
			t.Errorf("the handler's JSON holds the secret: %s", js)
		}
	})
	t.Run("pinned public key", func(t *testing.T) {
		h := unitConfig()
		h.PublicKeyFile = writeUnitFile(t, "pliro.pem", publicKeyPEMBytes(t, &unitECKey(t, elliptic.P256()).PublicKey))
		mustProvisionUnit(t, &h)
		if len(h.provider.pinnedKeys) != 1 {
			t.Errorf("%d pinned keys", len(h.provider.pinnedKeys))
		}
	})
}

func TestProvisionValidateErrors(t *testing.T) {
	ecPEM := publicKeyPEMBytes(t, &unitECKey(t, elliptic.P256()).PublicKey)
	for _, tc := range []struct {
		name    string
		config  func(t *testing.T, h *Handler)
		wantErr string
	}{
		{"missing issuer", func(t *testing.T, h *Handler) { h.Issuer = "" }, "issuer is required"},
		{"http issuer", func(t *testing.T, h *Handler) { h.Issuer = "http://news.plirotest.page" }, "must use https"},
		{"issuer with query", func(t *testing.T, h *Handler) { h.Issuer = "https://news.plirotest.page?x=1" }, "must be an absolute URL"},
		{"missing client_id", func(t *testing.T, h *Handler) { h.ClientID = "" }, "client_id is required"},
		{"missing client_secret", func(t *testing.T, h *Handler) { h.ClientSecret = "" }, "client_secret is required"},
		{"blank client_secret", func(t *testing.T, h *Handler) { h.ClientSecret = " \n" }, "client_secret is required"},
		{"secret placeholder that expands to empty", func(t *testing.T, h *Handler) {
			h.ClientSecret = "{env.PLIRO_UNIT_UNSET_VAR}"
		}, "expanding client_secret"},
		{"secret file missing", func(t *testing.T, h *Handler) {
			h.ClientSecret = "{file./nonexistent/pliro_client_secret}"
		}, "client_secret"},
		{"pkce bogus", func(t *testing.T, h *Handler) { h.PKCE = "sometimes" }, `pkce must be auto, on or off, not "sometimes"`},
		{"token_auth_method bogus", func(t *testing.T, h *Handler) { h.TokenAuthMethod = "private_key_jwt" }, "token_auth_method must be client_secret_basic or client_secret_post"},
		{"sign-in on the callback path", func(t *testing.T, h *Handler) { h.SignInPath = "/callback" }, "are both /callback"},
		{"sign-out on the back-channel path", func(t *testing.T, h *Handler) { h.SignOutPath = "/backchannel-logout" }, "are both /backchannel-logout"},
		{"absolute redirect_uri on the sign-out path", func(t *testing.T, h *Handler) {
			h.RedirectURI = "https://www.example-news.com/sign-out"
		}, "are both /sign-out"},
		{"sign_in_path without slash", func(t *testing.T, h *Handler) { h.SignInPath = "sign-in" }, "must be a path starting with /"},
		{"redirect_uri without path", func(t *testing.T, h *Handler) { h.RedirectURI = "https://www.example-news.com" }, "must be a path starting with /"},
		{"idle_timeout > max_lifetime", func(t *testing.T, h *Handler) {
			h.IdleTimeout = caddy.Duration(30 * 24 * time.Hour)
			h.MaxLifetime = caddy.Duration(7 * 24 * time.Hour)
		}, "idle_timeout (720h0m0s) must not exceed max_lifetime (168h0m0s)"},
		{"negative idle_timeout", func(t *testing.T, h *Handler) { h.IdleTimeout = caddy.Duration(-time.Hour) }, "must be positive"},
		{"issuer placeholder that expands to empty", func(t *testing.T, h *Handler) {
			h.Issuer = "{env.PLIRO_UNIT_UNSET_VAR}"
		}, "expanding issuer"},
		{"issuer placeholder that expands to http", func(t *testing.T, h *Handler) {
			t.Setenv("PLIRO_UNIT_ISSUER", "http://news.plirotest.page")
			h.Issuer = "{env.PLIRO_UNIT_ISSUER}"
		}, "must use https"},
		{"negative clock_skew", func(t *testing.T, h *Handler) { h.ClockSkew = caddy.Duration(-time.Second) }, "must not be negative"},
		{"negative userinfo_timeout", func(t *testing.T, h *Handler) { h.UserinfoTimeout = caddy.Duration(-time.Second) }, "must be positive"},
		{"negative auto_sign_in", func(t *testing.T, h *Handler) { h.AutoSignIn = caddy.Duration(-time.Hour) }, "must not be negative"},
		{"reauth_interval below a minute", func(t *testing.T, h *Handler) { h.ReauthInterval = caddy.Duration(10 * time.Second) }, "reauth_interval must be at least 1m0s"},
		{"clock_skew > 5m", func(t *testing.T, h *Handler) { h.ClockSkew = caddy.Duration(6 * time.Minute) }, "clock_skew above 5m"},
		{"cookie_name with space", func(t *testing.T, h *Handler) { h.CookieName = "pliro session" }, `cookie_name "pliro session" is not a valid cookie name`},
		{"cookie_name with semicolon", func(t *testing.T, h *Handler) { h.CookieName = "pliro;Domain=evil.example" }, "is not a valid cookie name"},
		{"redirect_uri with fragment", func(t *testing.T, h *Handler) { h.RedirectURI = "/callback#x" }, "must not contain a fragment"},
		{"http redirect_uri on non-localhost", func(t *testing.T, h *Handler) {
			h.RedirectURI = "http://www.example-news.com/callback"
		}, "must use https"},
		{"scheme-relative redirect_uri", func(t *testing.T, h *Handler) { h.RedirectURI = "//evil.example/callback" }, "must be an absolute URL or a path"},
		{"sign_out_redirect off-site", func(t *testing.T, h *Handler) { h.SignOutRedirect = "https://evil.example/" }, "sign_out_redirect must be a path on this site"},
		{"sign_out_redirect scheme-relative", func(t *testing.T, h *Handler) { h.SignOutRedirect = "//evil.example" }, "sign_out_redirect must be a path on this site"},
		{"http post_logout_redirect_uri", func(t *testing.T, h *Handler) {
			h.PostLogoutRedirectURI = "http://www.example-news.com/"
		}, "post_logout_redirect_uri"},
		{"identity_header_prefix with space", func(t *testing.T, h *Handler) { h.IdentityHeaderPrefix = "X Pliro-" }, "identity_header_prefix"},
		{"identity_header_prefix with underscore", func(t *testing.T, h *Handler) { h.IdentityHeaderPrefix = "X_Pliro_" }, "identity_header_prefix"},
		{"identity_header_prefix with colon", func(t *testing.T, h *Handler) { h.IdentityHeaderPrefix = "X-Pliro:" }, "identity_header_prefix"},
		{"identity_header_prefix with newline", func(t *testing.T, h *Handler) { h.IdentityHeaderPrefix = "X-Pliro-\r\nX-Admin-" }, "identity_header_prefix"},
		{"public_key_file missing", func(t *testing.T, h *Handler) {
			h.PublicKeyFile = "/nonexistent/pliro.pem"
		}, "reading public_key_file"},
		{"public_key_file garbage", func(t *testing.T, h *Handler) {
			h.PublicKeyFile = writeUnitFile(t, "pliro.pem", []byte("not a key\n"))
		}, "no PEM public key found"},
		{"public_key_file private key", func(t *testing.T, h *Handler) {
			h.PublicKeyFile = writeUnitFile(t, "pliro.pem", privateKeyPEMBytes(t, unitECKey(t, elliptic.P256())))
		}, "never a private key"},
		{"public_key_file RSA-1024", func(t *testing.T, h *Handler) {
			h.PublicKeyFile = writeUnitFile(t, "pliro.pem", publicKeyPEMBytes(t, &unitRSA1024().PublicKey))
		}, "at least 2048 bits"},
		{"public_key_file P-384", func(t *testing.T, h *Handler) {
			h.PublicKeyFile = writeUnitFile(t, "pliro.pem", publicKeyPEMBytes(t, &unitECKey(t, elliptic.P384()).PublicKey))
		}, "P-256"},
		{"public_key_file a directory", func(t *testing.T, h *Handler) { h.PublicKeyFile = t.TempDir() }, "reading public_key_file"},
		// The valid pinned key, for contrast with the cases above.
		{"public_key_file valid", func(t *testing.T, h *Handler) {
			h.PublicKeyFile = writeUnitFile(t, "pliro.pem", ecPEM)
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := unitConfig()
			tc.config(t, &h)
			err := provisionUnit(t, &h)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("expected an error containing %q, got none", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// TestProvisionDoesNoNetworkIO: Provision also runs for `caddy validate`,
// and Caddy must start while Pliro is down, so Provision and Validate must
// not contact the issuer; discovery happens on first use.
func TestProvisionDoesNoNetworkIO(t *testing.T) {
	t.Run("issuer on a closed port", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		h := unitConfig()
		h.Issuer = "http://" + addr
		start := time.Now()
		mustProvisionUnit(t, &h)
		if d := time.Since(start); d > time.Second {
			t.Errorf("Provision and Validate took %s", d)
		}
		if h.provider.ready.Load() != nil || h.provider.failures != 0 {
			t.Error("Provision tried to discover the provider")
		}
	})
	t.Run("issuer that counts connections", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		var conns atomic.Int32
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				conns.Add(1)
				c.Close()
			}
		}()
		h := unitConfig()
		h.Issuer = "http://" + l.Addr().String()
		mustProvisionUnit(t, &h)
		time.Sleep(50 * time.Millisecond) // catch a discovery started in the background too
		if n := conns.Load(); n != 0 {
			t.Errorf("Provision and Validate opened %d connections to the issuer", n)
		}
	})
}

// TestProvisionSharesStateAcrossReload: a config reload provisions a new
// handler before the old one is cleaned up; sessions must survive it, and
// the last handler to go stops the store's sweeper.
func TestProvisionSharesStateAcrossReload(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	old, reloaded := unitConfig(), unitConfig()
	// Each handler releases its hold once, also when the test stops early.
	released := map[*Handler]bool{}
	release := func(h *Handler) error {
		if released[h] {
			return nil
		}
		released[h] = true
		return h.Cleanup()
	}
	t.Cleanup(func() { _, _ = release(&old), release(&reloaded) })
	if err := provisionNoPanic(&old, ctx); err != nil {
		t.Fatal(err)
	}
	if err := provisionNoPanic(&reloaded, ctx); err != nil {
		t.Fatal(err)
	}
	if old.store != reloaded.store || old.keys != reloaded.keys {
		t.Fatal("the reloaded handler does not share the sessions and sealing key")
	}
	if err := release(&old); err != nil {
		t.Fatal(err)
	}
	store := reloaded.store.(*memoryStore)
	select {
	case <-store.stop:
		t.Fatal("the store stopped while a config still uses it")
	default:
	}
	if err := release(&reloaded); err != nil {
		t.Fatal(err)
	}
	select {
	case <-store.stop:
	default:
		t.Fatal("the store's sweeper outlived the last config")
	}
}
