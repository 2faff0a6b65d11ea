package pliro

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

// Fuzz targets for everything that parses outside input. Seed corpora live
// in testdata/fuzz/<target> (plus the f.Add seeds) and run with every `go
// test`; scripts/test fuzzes each target briefly. A crash the fuzzer finds is
// written there and becomes a regression test.

const fuzzIssuer = "https://pliro.example"

// fuzzHandler is a provisioned-enough handler with no network: a pinned key
// (no discovery), a memory store and a fresh sealing key. It returns the
// private key that signs for it.
func fuzzHandler(t testing.TB) (*Handler, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sealKey := make([]byte, 32)
	_, _ = rand.Read(sealKey)
	s, err := newSealer(sealKey)
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{Issuer: fuzzIssuer, ClientID: testClientID, ClientSecret: testClientSecret}
	h.setDefaults()
	h.clientSecret, h.callbackPath = testClientSecret, defaultRedirectPath
	h.logger, h.refreshing, h.keys = zap.NewNop(), new(sync.Map), s
	h.storeErrors = newLogThrottle(storeWarningInterval)
	store := newMemoryStore()
	t.Cleanup(func() { _ = store.Destruct() })
	h.store = store
	h.provider = &provider{
		issuer: fuzzIssuer, clientID: testClientID, pkce: "off", clockSkew: time.Minute, timeout: time.Second,
		pinnedKeys: []crypto.PublicKey{&key.PublicKey}, client: newProviderClient(time.Second),
	}
	return h, key
}

func FuzzCallback(f *testing.F) {
	f.Add("state", "code", "", "cookie")
	f.Add("", "", "login_required", "")
	f.Add(strings.Repeat("s", 600), "c", "access_denied", strings.Repeat("A", 3000))
	f.Add("abc", "x", "", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	h, _ := fuzzHandler(f)
	f.Fuzz(func(t *testing.T, state, code, errCode, cookie string) {
		q := url.Values{"state": {state}, "code": {code}}
		if errCode != "" {
			q.Set("error", errCode)
		}
		r := httptest.NewRequest(http.MethodGet, "/callback?"+q.Encode(), nil)
		r.AddCookie(&http.Cookie{Name: signInCookieName(r, state), Value: sanitizeCookieValue(cookie)})
		_, result, err := h.finishSignIn(httptest.NewRecorder(), r)
		// Without a cookie sealed by this site there is no sign-in.
		if err == nil || result == resultSuccess {
			t.Fatalf("callback without a real attempt succeeded: %s", result)
		}
	})
}

func FuzzLogoutToken(f *testing.F) {
	h, key := fuzzHandler(f)
	claims := map[string]any{
		"iss": fuzzIssuer, "aud": testClientID, "iat": time.Now().Unix(), "jti": "j", "sub": testSubject,
		"events": map[string]any{backchannelLogoutEvent: map[string]any{}},
	}
	f.Add(signES256With(key, map[string]any{"alg": "ES256", "typ": "logout+jwt"}, claims))
	f.Add(signNone(map[string]any{"typ": "logout+jwt"}, claims))
	f.Add(signHS256([]byte(testClientSecret), map[string]any{"typ": "logout+jwt"}, claims))
	f.Add("a.b.c")
	f.Add(`{"payload":"e30","signatures":[]}`)
	f.Fuzz(func(t *testing.T, raw string) {
		lt, err := h.verifyLogoutToken(t.Context(), raw)
		if err == nil && (lt.Subject == "" && lt.SID == "" || lt.replayKey == "") {
			t.Fatalf("accepted a logout token without sub, sid or replay key: %+v", lt)
		}
	})
}

func FuzzBackchannelRequest(f *testing.F) {
	f.Add("application/x-www-form-urlencoded", "logout_token=a.b.c")
	f.Add("application/x-www-form-urlencoded; charset=utf-8", "logout_token=%zz")
	f.Add("multipart/form-data; boundary=x", "--x\r\n")
	f.Add("", "")
	h, _ := fuzzHandler(f)
	f.Fuzz(func(t *testing.T, contentType, body string) {
		r := httptest.NewRequest(http.MethodPost, defaultBackchannelPath, strings.NewReader(body))
		r.Header.Set("Content-Type", contentType)
		w := httptest.NewRecorder()
		_ = h.serveBackchannelLogout(w, r)
		if w.Code == http.StatusOK {
			t.Fatalf("a forged notification was accepted: %q", body)
		}
		if w.Header().Get("Cache-Control") != "no-store" {
			t.Fatal("back-channel answer without Cache-Control: no-store")
		}
	})
}

func FuzzSessionCookie(f *testing.F) {
	f.Add(strings.Repeat("A", 43))
	f.Add("")
	f.Add("%00")
	f.Add(strings.Repeat("-", 43))
	h, _ := fuzzHandler(f)
	f.Fuzz(func(t *testing.T, value string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Cookie", defaultCookieName+"="+value)
		s, _, err := h.loadSession(r)
		if s != nil || err != nil {
			t.Fatalf("an unknown cookie is a session (%v, %v)", s, err)
		}
	})
}

func FuzzCaddyfile(f *testing.F) {
	f.Add("issuer https://p.example\nclient_id c\nclient_secret {env.S}\nidle_timeout 14d\nstore redis 127.0.0.1:6379 {\ndb 2\n}")
	f.Add("plan premium premium-plus\nclaim role editor\nsubscribe_url https://p.example/offers/x redirect")
	f.Add("identity_headers X-\nend_provider_session off\nrefresh_interval off")
	f.Fuzz(func(t *testing.T, block string) {
		for _, dir := range []string{"pliro", "pliro_require"} {
			// Tokenize as Caddy does; input Caddy itself refuses (a bad
			// heredoc) never reaches the module. NewTestDispenser would
			// exit the process on it.
			tokens, err := caddyfile.Tokenize([]byte(dir+" {\n"+block+"\n}"), "Caddyfile")
			if err != nil {
				continue
			}
			d := caddyfile.NewDispenser(tokens)
			if dir == "pliro" {
				_ = new(Handler).UnmarshalCaddyfile(d)
			} else {
				_ = new(Require).UnmarshalCaddyfile(d)
			}
		}
	})
}

func FuzzCustomerClaims(f *testing.F) {
	f.Add([]byte(`{"sub":"cus_1","plan":"premium","plan_slugs":["premium"],"role":"editor","n":3,"ok":true}`))
	f.Add([]byte(`{"plan_slugs":"a b,c","sub":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		c, err := parseCustomerClaims(payload)
		if err != nil {
			return
		}
		if len(c.Extra) > maxExtraClaims {
			t.Fatalf("%d extra claims kept", len(c.Extra))
		}
		for _, slug := range c.PlanSlugs {
			if slug == "" {
				t.Fatal("empty plan slug kept")
			}
		}
	})
}

// sanitizeCookieValue keeps the bytes a Cookie header can carry, so the
// fuzzer explores the module, not net/http's cookie parser.
func sanitizeCookieValue(v string) string {
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r >= 0x7f || r == '"' || r == ';' || r == ',' || r == '\\' {
			return -1
		}
		return r
	}, v)
}
