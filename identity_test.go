package pliro

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// unitIdentityHandler is a provisioned handler with identity headers under
// prefix ("" for none) and one signed-in customer, whose session cookie it
// returns.
func unitIdentityHandler(t *testing.T, prefix string) (*Handler, *http.Cookie) {
	t.Helper()
	h := unitConfig()
	h.IdentityHeaderPrefix = prefix
	mustProvisionUnit(t, &h)
	cookieValue, key := newSessionID()
	t0 := now()
	s := &Session{
		Subject:     testSubject,
		ProviderSID: testProviderSID,
		Email:       "reader@example.com",
		Name:        "Rita Reader",
		Plan:        "premium",
		PlanSlugs:   []string{"premium", "puzzles"},
		Created:     t0,
		LastSeen:    t0,
		// Fresh claims and a fresh sign-in: no userinfo call, no silent
		// re-authentication in these tests.
		ClaimsAt: t0,
		ReauthAt: t0,
	}
	if err := h.store.Save(context.Background(), key, s, h.deadline(s)); err != nil {
		t.Fatal(err)
	}
	return &h, &http.Cookie{Name: defaultCookieName, Value: cookieValue}
}

// caddyRequest is a request as Caddy hands it to a handler: a replacer and
// the route's vars in its context.
func unitCaddyRequest(method, target string) (*http.Request, *caddy.Replacer) {
	r := httptest.NewRequest(method, target, nil)
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{})
	return r.WithContext(ctx), repl
}

// unitUpstream stands for what runs after the handler (reverse_proxy, PHP):
// it records the request headers it received.
type unitUpstream struct {
	called bool
	header http.Header
}

func (u *unitUpstream) handler() caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		u.called = true
		u.header = r.Header.Clone()
		return nil
	})
}

// TestIdentityHeaderSpoofing: the site's upstream trusts X-Pliro-Id to say
// who the customer is. An attacker, anonymous or signed in as themselves,
// sends X-Pliro-Id: cus_victim (in any case, or with underscores, which
// CGI, PHP and many frameworks fold into the same variable) hoping the
// upstream takes them for the victim. No header under the prefix may reach
// the upstream except the ones the module set from the session.
func TestIdentityHeaderSpoofing(t *testing.T) {
	spoofed := map[string][]string{
		"X-Pliro-Id":       {"cus_victim"},
		"x-pliro-id":       {"cus_victim"},
		"X_Pliro_Id":       {"cus_victim"},
		"x_pliro_email":    {"victim@example.com"},
		"X-PLIRO-PLAN":     {"premium-plus"},
		"X-Pliro-Plans":    {"premium-plus,gold"},
		"X-Pliro-Is-Admin": {"true"},
		"X-Pliro_Name":     {"Victim"},
	}
	for _, tc := range []struct {
		name     string
		prefix   string
		signedIn bool
		want     map[string]string // every header under the prefix the upstream may see
	}{
		{name: "anonymous", prefix: "X-Pliro-", want: map[string]string{}},
		{name: "signed in", prefix: "X-Pliro-", signedIn: true, want: map[string]string{
			"X-Pliro-Id":    testSubject,
			"X-Pliro-Email": "reader@example.com",
			"X-Pliro-Name":  "Rita Reader",
			"X-Pliro-Plan":  "premium",
			"X-Pliro-Plans": "premium,puzzles",
		}},
		{name: "anonymous, lower-case prefix configured", prefix: "x-pliro-", want: map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, session := unitIdentityHandler(t, tc.prefix)
			r, _ := unitCaddyRequest(http.MethodGet, "/article/7")
			for k, v := range spoofed {
				r.Header[k] = v
			}
			r.Header.Set("Accept", "text/html")
			if tc.signedIn {
				r.AddCookie(session)
			}
			var up unitUpstream
			if err := h.ServeHTTP(httptest.NewRecorder(), r, up.handler()); err != nil {
				t.Fatal(err)
			}
			if !up.called {
				t.Fatal("the upstream was not called")
			}
			got := map[string]string{}
			for k, v := range up.header {
				if len(k) >= len("X-Pliro") && equalFoldUnderscore(k[:len("X-Pliro")], "X-Pliro") {
					if len(v) != 1 {
						t.Errorf("%s reached the upstream %d times: %q", k, len(v), v)
					}
					got[k] = v[0]
				}
			}
			for k, v := range got {
				if tc.want[k] != v {
					t.Errorf("upstream saw %s: %q; want %q", k, v, tc.want[k])
				}
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("upstream lacks %s: %q", k, v)
				}
			}
			// Headers outside the prefix are the client's business.
			if up.header.Get("Accept") != "text/html" {
				t.Error("an unrelated header was removed")
			}
		})
	}
}

// TestIdentityHeaderSpoofingWithIdentityHeadersOff: an app behind Caddy was
// written to read X-Pliro-Id (identity_headers was on). Later the operator
// removes identity_headers, say to use placeholders instead, and forgets
// the app. An attacker now sends X-Pliro-Id: cus_victim; if it reached the
// app, the app would take them for the victim. The module's own header
// namespace is cleared whatever the configuration.
func TestIdentityHeaderSpoofingWithIdentityHeadersOff(t *testing.T) {
	for name, prefix := range map[string]string{"identity_headers off": "", "another prefix": "X-Reader-"} {
		t.Run(name, func(t *testing.T) {
			h, session := unitIdentityHandler(t, prefix)
			for _, signedIn := range []bool{false, true} {
				r, _ := unitCaddyRequest(http.MethodGet, "/article/7")
				r.Header["X-Pliro-Id"] = []string{"cus_victim"}
				r.Header["x_pliro_plan"] = []string{"premium-plus"}
				if signedIn {
					r.AddCookie(session)
				}
				var up unitUpstream
				if err := h.ServeHTTP(httptest.NewRecorder(), r, up.handler()); err != nil {
					t.Fatal(err)
				}
				for k, v := range up.header {
					if len(k) >= 8 && equalFoldUnderscore(k[:8], "X-Pliro-") {
						t.Errorf("signed in %v: upstream saw %s: %q", signedIn, k, v)
					}
				}
			}
		})
	}
}

// equalFoldUnderscore compares header name prefixes as CGI does: case
// folded, "_" read as "-".
func equalFoldUnderscore(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if x == '_' {
			x = '-'
		}
		if y == '_' {
			y = '-'
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// TestIdentityHeaderSpoofingWhileStoreDown: with the session store
// unreachable every visitor is anonymous; the spoofed headers must still be
// removed.
func TestIdentityHeaderSpoofingWhileStoreDown(t *testing.T) {
	h, session := unitIdentityHandler(t, "X-Pliro-")
	h.store = unitFailingStore{}
	r, repl := unitCaddyRequest(http.MethodGet, "/article/7")
	r.AddCookie(session)
	r.Header.Set("X-Pliro-Id", "cus_victim")
	var up unitUpstream
	if err := h.ServeHTTP(httptest.NewRecorder(), r, up.handler()); err != nil {
		t.Fatal(err)
	}
	if v := up.header.Values("X-Pliro-Id"); len(v) != 0 {
		t.Fatalf("upstream saw X-Pliro-Id %q", v)
	}
	if id, _ := repl.GetString("http.auth.user.id"); id != "" {
		t.Fatalf("user id %q while the store is down", id)
	}
}

// unitFailingStore is a store that is down. It embeds Store so that it keeps
// compiling as the interface grows; a method it does not override panics.
type unitFailingStore struct{ Store }

var errUnitStoreDown = errors.New("store unreachable")

func (unitFailingStore) Load(context.Context, string) (*Session, bool, error) {
	return nil, false, errUnitStoreDown
}

func (unitFailingStore) Save(context.Context, string, *Session, time.Time) error {
	return errUnitStoreDown
}

func (unitFailingStore) Replace(context.Context, string, *Session, time.Time) (bool, error) {
	return false, errUnitStoreDown
}

func TestIdentityPlaceholders(t *testing.T) {
	h, session := unitIdentityHandler(t, "")
	keys := []string{"id", "email", "name", "plan", "plan_slugs", "sid"}

	t.Run("signed in", func(t *testing.T) {
		r, repl := unitCaddyRequest(http.MethodGet, "/")
		r.AddCookie(session)
		var up unitUpstream
		if err := h.ServeHTTP(httptest.NewRecorder(), r, up.handler()); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"id": testSubject, "email": "reader@example.com", "name": "Rita Reader",
			"plan": "premium", "plan_slugs": "premium,puzzles", "sid": testProviderSID,
		}
		for _, k := range keys {
			if got, _ := repl.GetString("http.auth.user." + k); got != want[k] {
				t.Errorf("{http.auth.user.%s} = %q, want %q", k, got, want[k])
			}
		}
		// Without identity_headers, no header is added.
		for k := range up.header {
			if equalFoldUnderscore(k[:min(len(k), 8)], "X-Pliro-") {
				t.Errorf("header %s set without identity_headers", k)
			}
		}
	})
	t.Run("anonymous", func(t *testing.T) {
		r, repl := unitCaddyRequest(http.MethodGet, "/")
		var up unitUpstream
		if err := h.ServeHTTP(httptest.NewRecorder(), r, up.handler()); err != nil {
			t.Fatal(err)
		}
		// Set and empty, so that templates render nothing rather than the
		// placeholder's name.
		for _, k := range keys {
			if got, ok := repl.GetString("http.auth.user." + k); !ok || got != "" {
				t.Errorf("{http.auth.user.%s} = %q, %v; want set and empty", k, got, ok)
			}
		}
	})
}

// TestIdentityHeadersCannotBeSplit: a name from Pliro holding CR LF must not
// add a header of its own in the request to the upstream.
func TestIdentityHeadersCannotBeSplit(t *testing.T) {
	h, _ := unitIdentityHandler(t, "X-Pliro-")
	cookieValue, key := newSessionID()
	t0 := now()
	s := &Session{
		Subject: testSubject, Name: "Rita\r\nX-Admin: 1", Email: "a@example.com\n",
		Created: t0, LastSeen: t0, ClaimsAt: t0, ReauthAt: t0,
	}
	if err := h.store.Save(context.Background(), key, s, h.deadline(s)); err != nil {
		t.Fatal(err)
	}
	r, _ := unitCaddyRequest(http.MethodGet, "/")
	r.AddCookie(&http.Cookie{Name: defaultCookieName, Value: cookieValue})
	var up unitUpstream
	if err := h.ServeHTTP(httptest.NewRecorder(), r, up.handler()); err != nil {
		t.Fatal(err)
	}
	if got := up.header.Get("X-Pliro-Name"); got != "RitaX-Admin: 1" {
		t.Errorf("X-Pliro-Name %q", got)
	}
	if got := up.header.Get("X-Pliro-Email"); got != "a@example.com" {
		t.Errorf("X-Pliro-Email %q", got)
	}
}

func TestHeaderSafe(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Rita Reader", "Rita Reader"},
		{"Rita\r\nX-Admin: 1", "RitaX-Admin: 1"},
		{"Rita\nReader", "RitaReader"},
		{"Rita\rReader", "RitaReader"},
		{"tab\tkept", "tab\tkept"},
		{"nul\x00del\x7fesc\x1b", "nuldelesc"},
		{"Zoë Łukasz 世界", "Zoë Łukasz 世界"},
		{"", ""},
	} {
		if got := headerSafe(tc.in); got != tc.want {
			t.Errorf("headerSafe(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
