package pliro

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

// unitSignInHandler is a Handler with just what sign-in state needs: a
// sealer with a fresh key and a memory store.
func unitSignInHandler(t testing.TB) *Handler {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	s, err := newSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	store := newMemoryStore()
	t.Cleanup(func() { _ = store.Destruct() })
	return &Handler{CookieName: defaultCookieName, keys: s, store: store, logger: zap.NewNop()}
}

func newUnitSealer(t testing.TB, key []byte) *sealer {
	t.Helper()
	s, err := newSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// unitSiteRequest is a request to the site, over HTTPS when https is true,
// carrying cookies.
func unitSiteRequest(target string, https bool, cookies ...*http.Cookie) *http.Request {
	r := httptest.NewRequest(http.MethodGet, target, nil)
	if https {
		r.TLS = &tls.ConnectionState{}
	}
	for _, c := range cookies {
		r.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	}
	return r
}

// startUnitAttempt saves a sign-in attempt as the sign-in redirect does and
// returns its cookie.
func startUnitAttempt(t *testing.T, h *Handler, r *http.Request, a *signInAttempt) *http.Cookie {
	t.Helper()
	rec := httptest.NewRecorder()
	h.saveSignInAttempt(rec, r, a)
	want := signInCookieName(r, a.State)
	for _, c := range rec.Result().Cookies() {
		if c.Name == want && c.MaxAge > 0 {
			return c
		}
	}
	t.Fatalf("no cookie %s in %v", want, rec.Result().Header["Set-Cookie"])
	return nil
}

func newUnitAttempt() *signInAttempt {
	return &signInAttempt{
		State:    randomToken(32),
		Nonce:    randomToken(32),
		Verifier: "verifier-" + randomToken(8),
		ReturnTo: "/members/article/7?page=2",
		Issued:   now().Unix(),
	}
}

// sealedAttemptCookie seals a for the cookie of state, bypassing
// saveSignInAttempt (to build what an attacker, or an old browser, holds).
func sealedAttemptCookie(t *testing.T, h *Handler, r *http.Request, state string, a *signInAttempt) *http.Cookie {
	t.Helper()
	plain, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	name := signInCookieName(r, state)
	return &http.Cookie{Name: name, Value: h.keys.(*sealer).seal(name, plain)}
}

func TestSealerRoundTrip(t *testing.T) {
	s := newUnitSealer(t, bytes.Repeat([]byte{7}, 32))
	for _, plain := range [][]byte{[]byte(`{"s":"state"}`), {}, bytes.Repeat([]byte("x"), 1000)} {
		v1 := s.seal("pliro_signin_abc", plain)
		v2 := s.seal("pliro_signin_abc", plain)
		if v1 == v2 {
			t.Error("two seals of the same value are equal: the nonce is not random")
		}
		for _, v := range []string{v1, v2} {
			got, err := s.open("pliro_signin_abc", v)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("open = %q, %v; want %q", got, err, plain)
			}
		}
	}
}

func TestSealerRefuses(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	s := newUnitSealer(t, key)
	const name = "pliro_signin_abc"
	sealed := s.seal(name, []byte(`{"s":"state","r":"/members/"}`))
	raw, _ := base64.RawURLEncoding.DecodeString(sealed)
	reencode := func(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
	flip := func(i int) string {
		b := bytes.Clone(raw)
		b[i] ^= 0x01
		return reencode(b)
	}
	otherKey := bytes.Repeat([]byte{8}, 32)

	for _, tc := range []struct {
		name   string
		sealer *sealer
		cookie string
		value  string
	}{
		{"tampered ciphertext", s, name, flip(len(raw) / 2)},
		{"tampered nonce", s, name, flip(0)},
		{"tampered tag", s, name, flip(len(raw) - 1)},
		{"truncated", s, name, sealed[:len(sealed)-4]},
		{"truncated to the nonce", s, name, reencode(raw[:12])},
		{"empty", s, name, ""},
		{"not base64", s, name, "!!!" + sealed},
		{"with padding", s, name, sealed + "=="},
		{"standard base64 alphabet", s, name, strings.NewReplacer("-", "+", "_", "/").Replace(sealed) + "+/"},
		{"value moved to another cookie", s, "pliro_signin_def", sealed},
		{"value moved to the session cookie", s, defaultCookieName, sealed},
		{"value moved to the __Host- cookie", s, "__Host-" + name, sealed},
		{"sealed by another key", newUnitSealer(t, otherKey), name, sealed},
		{"over-long", s, name, sealed + strings.Repeat("A", maxSealedCookieLen)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if plain, err := tc.sealer.open(tc.cookie, tc.value); err == nil {
				t.Fatalf("opened %q", plain)
			} else if !errors.Is(err, errBadSeal) {
				t.Fatalf("error %v, want errBadSeal", err)
			}
		})
	}
}

func TestTakeSignInAttempt(t *testing.T) {
	for _, https := range []bool{false, true} {
		name := "http"
		if https {
			name = "https"
		}
		t.Run(name, func(t *testing.T) {
			h := unitSignInHandler(t)
			a := newUnitAttempt()
			c := startUnitAttempt(t, h, unitSiteRequest("/members/article/7?page=2", https), a)
			if https && (!strings.HasPrefix(c.Name, "__Host-") || !c.Secure) {
				t.Errorf("cookie %s on HTTPS: want the __Host- prefix and Secure", c)
			}
			if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.MaxAge != int(signInAttemptTTL.Seconds()) {
				t.Errorf("cookie attributes %s", c)
			}

			rec := httptest.NewRecorder()
			got, err := h.takeSignInAttempt(rec, unitSiteRequest("/callback?state="+a.State, https, c), a.State)
			if err != nil {
				t.Fatal(err)
			}
			if *got != *a {
				t.Errorf("got %+v, want %+v", got, a)
			}
			// The attempt's cookie is deleted: a state is good once.
			deleted := false
			for _, rc := range rec.Result().Cookies() {
				deleted = deleted || (rc.Name == c.Name && rc.MaxAge < 0)
			}
			if !deleted {
				t.Errorf("cookie %s not deleted: %v", c.Name, rec.Result().Header["Set-Cookie"])
			}
			if rec.Header().Get("Cache-Control") != "no-store" {
				t.Error("a response that sets cookies must not be cached")
			}
		})
	}
}

// TestSignInLoginCSRF: the attacker signs in to Pliro with their own
// account, stops at the callback, and lures the victim to
// /callback?code=<attacker's code>&state=<attacker's state>. Were it
// accepted, the victim would be signed in as the attacker and whatever they
// do (save a card, read history) would land in the attacker's account. The
// victim's browser holds no attempt for that state, so it is refused.
func TestSignInLoginCSRF(t *testing.T) {
	h := unitSignInHandler(t)
	attackerBrowser := unitSiteRequest("/sign-in", false)
	attackerAttempt := newUnitAttempt()
	_ = startUnitAttempt(t, h, attackerBrowser, attackerAttempt)

	// The victim has a sign-in of their own in progress, in another tab.
	victimCookie := startUnitAttempt(t, h, unitSiteRequest("/sign-in", false), newUnitAttempt())
	victim := unitSiteRequest("/callback?state="+attackerAttempt.State, false, victimCookie)
	if _, err := h.takeSignInAttempt(httptest.NewRecorder(), victim, attackerAttempt.State); !errors.Is(err, errNoSignInAttempt) {
		t.Fatalf("error %v, want errNoSignInAttempt", err)
	}
}

// TestSignInStateMismatchWithNameDerivedCookie: the cookie's name comes from
// only 8 bytes of the state's hash. An attacker who found (or forced) a
// second state whose cookie name is the same must still not have a sealed
// attempt accepted for a state it was not made for: the whole state inside
// the sealed value is compared.
func TestSignInStateMismatchWithNameDerivedCookie(t *testing.T) {
	h := unitSignInHandler(t)
	r := unitSiteRequest("/", false)
	a := newUnitAttempt()
	otherState := randomToken(32)
	// The sealed attempt is for a.State, under the cookie name of otherState
	// (what a hash-prefix collision would give).
	c := sealedAttemptCookie(t, h, r, otherState, a)
	callback := unitSiteRequest("/callback?state="+otherState, false, c)
	if _, err := h.takeSignInAttempt(httptest.NewRecorder(), callback, otherState); !errors.Is(err, errNoSignInAttempt) {
		t.Fatalf("error %v, want errNoSignInAttempt", err)
	}
}

// TestSignInAttemptMovedToAnotherCookie: a sealed value copied under the
// name of another state's cookie does not open: the cookie name is the AEAD's
// additional data.
func TestSignInAttemptMovedToAnotherCookie(t *testing.T) {
	h := unitSignInHandler(t)
	r := unitSiteRequest("/", false)
	a, b := newUnitAttempt(), newUnitAttempt()
	ca := startUnitAttempt(t, h, r, a)
	moved := &http.Cookie{Name: signInCookieName(r, b.State), Value: ca.Value}
	callback := unitSiteRequest("/callback?state="+b.State, false, moved)
	if _, err := h.takeSignInAttempt(httptest.NewRecorder(), callback, b.State); !errors.Is(err, errNoSignInAttempt) {
		t.Fatalf("error %v, want errNoSignInAttempt", err)
	}
}

// TestSignInAttemptPlantedWithoutHostPrefix: on HTTPS the attempt cookie is
// __Host- prefixed, which a sibling subdomain cannot set. A cookie of the
// unprefixed name (which a sibling could plant) is ignored.
func TestSignInAttemptPlantedWithoutHostPrefix(t *testing.T) {
	h := unitSignInHandler(t)
	a := newUnitAttempt()
	planted := sealedAttemptCookie(t, h, unitSiteRequest("/", false), a.State, a) // the http name
	callback := unitSiteRequest("/callback?state="+a.State, true, planted)
	if _, err := h.takeSignInAttempt(httptest.NewRecorder(), callback, a.State); !errors.Is(err, errNoSignInAttempt) {
		t.Fatalf("error %v, want errNoSignInAttempt", err)
	}
}

func TestSignInAttemptExpired(t *testing.T) {
	clock := useUnitClock(t)
	h := unitSignInHandler(t)
	r := unitSiteRequest("/", false)

	inTime := newUnitAttempt()
	cIn := startUnitAttempt(t, h, r, inTime)
	late := newUnitAttempt()
	cLate := startUnitAttempt(t, h, r, late)

	clock.advance(signInAttemptTTL - time.Second)
	if _, err := h.takeSignInAttempt(httptest.NewRecorder(), unitSiteRequest("/callback", false, cIn), inTime.State); err != nil {
		t.Fatalf("just in time: %v", err)
	}
	// The browser may keep the cookie past its Max-Age (a restored
	// session); the sealed time still ends it.
	clock.advance(2 * time.Second)
	if _, err := h.takeSignInAttempt(httptest.NewRecorder(), unitSiteRequest("/callback", false, cLate), late.State); !errors.Is(err, errSignInAttemptExpired) {
		t.Fatalf("error %v, want errSignInAttemptExpired", err)
	}
}

// TestSignInCallbackReplay: the callback URL and the attempt cookie are
// captured (a shared computer, a proxy log, a browser that restores
// cookies) and sent again. The first callback used the state; a copy of its
// cookie must not start a second sign-in.
func TestSignInCallbackReplay(t *testing.T) {
	h := unitSignInHandler(t)
	a := newUnitAttempt()
	c := startUnitAttempt(t, h, unitSiteRequest("/", false), a)
	if _, err := h.takeSignInAttempt(httptest.NewRecorder(), unitSiteRequest("/callback", false, c), a.State); err != nil {
		t.Fatal(err)
	}
	if _, err := h.takeSignInAttempt(httptest.NewRecorder(), unitSiteRequest("/callback", false, c), a.State); !errors.Is(err, errNoSignInAttempt) {
		t.Fatalf("replay: error %v, want errNoSignInAttempt", err)
	}
}

// TestSignInAttemptWithLongReturnTo: readers arrive from newsletter links
// whose URLs carry long queries (tracking parameters, many "&"). The attempt
// cookie must still fit in a browser cookie (4096 bytes) and open at the
// callback, or the reader, having just typed their password at Pliro, gets
// "no sign-in in progress". Coming back to the page without its query (or
// to the home page) is acceptable; failing the sign-in is not.
func TestSignInAttemptWithLongReturnTo(t *testing.T) {
	query := func(n int) string {
		q := strings.Repeat("utm_x=1&", n/8+1)
		return q[:n]
	}
	for _, tc := range []struct {
		name     string
		returnTo string
	}{
		{"short", "/members/article/7?page=2"},
		{"1000 characters with many &", "/members/article/7?" + query(1000-len("/members/article/7?"))},
		{"1500 characters", "/members/article/7?" + strings.Repeat("a", 1500-len("/members/article/7?"))},
		{"maxReturnToLen with many &", "/members/article/7?" + query(maxReturnToLen-len("/members/article/7?"))},
		{"maxReturnToLen of path", "/" + strings.Repeat("p", maxReturnToLen-1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := unitSignInHandler(t)
			a := newUnitAttempt()
			original := tc.returnTo
			a.ReturnTo = original
			r := unitSiteRequest("/", true)
			rec := httptest.NewRecorder()
			h.saveSignInAttempt(rec, r, a)
			for _, line := range rec.Result().Header["Set-Cookie"] {
				name, _, _ := strings.Cut(line, ";")
				if len(name) > 4096 {
					t.Errorf("cookie of %d bytes: browsers drop cookies over 4096", len(name))
				}
			}
			var c *http.Cookie
			for _, rc := range rec.Result().Cookies() {
				if rc.Name == signInCookieName(r, a.State) {
					c = rc
				}
			}
			if c == nil {
				t.Fatal("no attempt cookie")
			}
			got, err := h.takeSignInAttempt(httptest.NewRecorder(), unitSiteRequest("/callback", true, c), a.State)
			if err != nil {
				t.Fatalf("return-to of %d bytes: the callback cannot find its attempt: %v", len(original), err)
			}
			path, _, _ := strings.Cut(original, "?")
			if got.ReturnTo != original && got.ReturnTo != path && got.ReturnTo != "/" {
				t.Errorf("returns to %q, want %q, its path or /", got.ReturnTo, original)
			}
		})
	}
}

func TestTakeSignInAttemptRefusesBadState(t *testing.T) {
	h := unitSignInHandler(t)
	a := newUnitAttempt()
	c := startUnitAttempt(t, h, unitSiteRequest("/", false), a)
	for _, tc := range []struct{ name, state string }{
		{"empty", ""},
		{"over-long", a.State + strings.Repeat("x", 512)},
		{"prefix of the state", a.State[:len(a.State)-1]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := h.takeSignInAttempt(httptest.NewRecorder(), unitSiteRequest("/callback", false, c), tc.state); !errors.Is(err, errNoSignInAttempt) {
				t.Fatalf("error %v, want errNoSignInAttempt", err)
			}
		})
	}
	t.Run("garbled cookie", func(t *testing.T) {
		garbled := &http.Cookie{Name: c.Name, Value: c.Value[:len(c.Value)-2] + "AA"}
		if _, err := h.takeSignInAttempt(httptest.NewRecorder(), unitSiteRequest("/callback", false, garbled), a.State); !errors.Is(err, errNoSignInAttempt) {
			t.Fatalf("error %v, want errNoSignInAttempt", err)
		}
	})
}

// TestPruneSignInAttempts: a page that opens many protected tabs (or a
// hostile page that makes the browser start sign-in over and over) must not
// grow the Cookie header without bound: starting a sign-in expires the
// oldest attempts so that at most maxSignInAttempts remain.
func TestPruneSignInAttempts(t *testing.T) {
	clock := useUnitClock(t)
	for _, held := range []int{0, maxSignInAttempts - 1, maxSignInAttempts, maxSignInAttempts + 3, 20} {
		t.Run(fmt.Sprintf("%d held", held), func(t *testing.T) {
			h := unitSignInHandler(t)
			base := unitSiteRequest("/", true)
			var cookies []*http.Cookie
			issued := map[string]int64{}
			for i := range held {
				a := newUnitAttempt()
				a.Issued = clock.now().Add(time.Duration(i-held) * time.Minute).Unix()
				c := sealedAttemptCookie(t, h, base, a.State, a)
				issued[c.Name] = a.Issued
				cookies = append(cookies, c)
			}
			session := &http.Cookie{Name: "__Host-" + defaultCookieName, Value: "session-value"}
			other := &http.Cookie{Name: "newsletter_seen", Value: "1"}
			r := unitSiteRequest("/members/x", true, append(cookies, session, other)...)

			rec := httptest.NewRecorder()
			a := newUnitAttempt()
			h.saveSignInAttempt(rec, r, a)

			jar := map[string]bool{}
			for _, c := range cookies {
				jar[c.Name] = true
			}
			var expired []string
			for _, c := range rec.Result().Cookies() {
				switch {
				case c.MaxAge < 0:
					if !jar[c.Name] {
						t.Errorf("expired %s, which the browser did not hold", c.Name)
					}
					expired = append(expired, c.Name)
					delete(jar, c.Name)
				case c.Name == signInCookieName(r, a.State):
					jar[c.Name] = true
				default:
					t.Errorf("unexpected cookie %s", c)
				}
			}
			if len(jar) > maxSignInAttempts {
				t.Errorf("browser holds %d attempts, want at most %d", len(jar), maxSignInAttempts)
			}
			if want := max(0, held-maxSignInAttempts+1); len(expired) != want {
				t.Errorf("expired %d attempts, want %d", len(expired), want)
			}
			// The oldest go first.
			for _, gone := range expired {
				for name := range jar {
					if t0, ok := issued[name]; ok && t0 < issued[gone] {
						t.Errorf("kept %s (issued %d) but expired the newer %s (issued %d)", name, t0, gone, issued[gone])
					}
				}
			}
			if !jar[signInCookieName(r, a.State)] {
				t.Error("the new attempt's cookie is missing")
			}
		})
	}
}

// TestPruneSignInAttemptsUnreadableFirst: cookies with the attempt prefix
// that do not open (from an old key, or forged) count as the oldest.
func TestPruneSignInAttemptsUnreadableFirst(t *testing.T) {
	useUnitClock(t)
	h := unitSignInHandler(t)
	base := unitSiteRequest("/", false)
	var cookies []*http.Cookie
	for range maxSignInAttempts - 1 {
		a := newUnitAttempt()
		cookies = append(cookies, sealedAttemptCookie(t, h, base, a.State, a))
	}
	junk := &http.Cookie{Name: signInCookieBase + "deadbeefdeadbeef", Value: "junk"}
	rec := httptest.NewRecorder()
	h.saveSignInAttempt(rec, unitSiteRequest("/", false, append(cookies, junk)...), newUnitAttempt())
	var expired []string
	for _, c := range rec.Result().Cookies() {
		if c.MaxAge < 0 {
			expired = append(expired, c.Name)
		}
	}
	if len(expired) != 1 || expired[0] != junk.Name {
		t.Fatalf("expired %v, want only the unreadable %s", expired, junk.Name)
	}
}

// FuzzOpenSealedCookie: open reads attacker-controlled cookies; it must
// never panic, and nothing but the sealed value (under its own name) may
// open.
func FuzzOpenSealedCookie(f *testing.F) {
	s := newUnitSealer(f, bytes.Repeat([]byte{42}, 32))
	const name = "pliro_signin_0123456789abcdef"
	plain := []byte(`{"s":"state","n":"nonce","r":"/","t":1760000000}`)
	sealed := s.seal(name, plain)
	for _, seed := range [][2]string{
		{name, sealed},
		{name, ""},
		{name, "A"},
		{name, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
		{name, sealed[:len(sealed)-1]},
		{"other", sealed},
		{"", sealed},
		{name, strings.Repeat("A", maxSealedCookieLen+1)},
		{name, "====" + sealed},
		{name, sealed + "\n"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, cookieName, value string) {
		got, err := s.open(cookieName, value)
		if err != nil {
			if got != nil {
				t.Fatalf("error %v with plaintext %q", err, got)
			}
			return
		}
		if cookieName != name || !bytes.Equal(got, plain) {
			t.Fatalf("open(%q, %q) = %q: something other than the sealed value opened", cookieName, value, got)
		}
	})
}
