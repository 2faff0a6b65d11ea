package pliro

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"strings"
	"time"
)

// A sign-in attempt is the state of one trip to Pliro's authorize endpoint:
// the state and nonce sent there, the PKCE verifier, and the page to return
// to. It travels in its own short-lived cookie, sealed with AES-GCM, named
// after the state so that several tabs can sign in at once; the callback
// finds it by the state Pliro sends back. Binding the state to a cookie of
// this browser is what defeats login CSRF (RFC 9700 §4.7.1, OIDC Core
// §3.1.2.1): a state from somebody else's browser finds no cookie here.
type signInAttempt struct {
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v,omitempty"` // PKCE code_verifier (RFC 7636)
	ReturnTo string `json:"r"`
	Issued   int64  `json:"t"`           // unix seconds
	Silent   bool   `json:"q,omitempty"` // prompt=none (silent re-authentication)
}

const (
	// signInAttemptTTL bounds how long a customer may take to sign in at
	// Pliro; the cookie and the sealed value both expire then.
	signInAttemptTTL = 10 * time.Minute
	// maxSignInAttempts bounds the attempt cookies one browser holds: a page
	// that opens many protected tabs cannot grow the Cookie header forever.
	maxSignInAttempts = 5
	// maxSealedCookieLen refuses absurd cookies before any decryption.
	maxSealedCookieLen = 2048
	signInCookieBase   = "pliro_signin_"
)

// signInCookieName derives the attempt cookie's name from the state: the
// callback can find its cookie without a server-side lookup.
func signInCookieName(r *http.Request, state string) string {
	sum := sha256.Sum256([]byte(state))
	return cookieName(r, signInCookieBase+hex.EncodeToString(sum[:8]))
}

// randomToken returns n random bytes, base64url encoded: states, nonces.
func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// sealer encrypts and authenticates cookie values with AES-256-GCM. The
// cookie's name is the additional data, so a value cannot be moved from one
// cookie to another.
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (*sealer, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

// current makes a sealer its own sealerSource: a fixed key.
func (s *sealer) current(context.Context) (*sealer, error) { return s, nil }

func (s *sealer) seal(name string, plaintext []byte) string {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	_, _ = rand.Read(nonce)
	return base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plaintext, []byte(name)))
}

var errBadSeal = errors.New("cookie is not sealed by this site")

func (s *sealer) open(name, value string) ([]byte, error) {
	if len(value) > maxSealedCookieLen {
		return nil, errBadSeal
	}
	raw, err := base64.RawURLEncoding.DecodeString(value)
	if err != nil || len(raw) < s.aead.NonceSize()+s.aead.Overhead() {
		return nil, errBadSeal
	}
	n := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, raw[:n], raw[n:], []byte(name))
	if err != nil {
		return nil, errBadSeal
	}
	return plain, nil
}

// saveSignInAttempt sets the attempt's cookie, first expiring the oldest
// attempts of this browser beyond maxSignInAttempts-1.
func (h *Handler) saveSignInAttempt(w http.ResponseWriter, r *http.Request, a *signInAttempt) error {
	s, err := h.sealerFor(r.Context())
	if err != nil {
		return err
	}
	h.pruneSignInAttempts(w, r, s)
	name := signInCookieName(r, a.State)
	value := sealAttempt(s, name, a)
	if len(value) > maxSealedCookieLen {
		// The page to return to is too long for a cookie (a link full of
		// tracking parameters): come back to its path, or to the home page,
		// rather than fail the callback.
		a.ReturnTo, _, _ = strings.Cut(a.ReturnTo, "?")
		if value = sealAttempt(s, name, a); len(value) > maxSealedCookieLen {
			a.ReturnTo = "/"
			value = sealAttempt(s, name, a)
		}
	}
	setCookie(w, r, name, value, int(signInAttemptTTL.Seconds()))
	return nil
}

// sealAttempt seals a for the cookie name. & < > are kept as they are, not
// escaped to six bytes each: a return-to full of & stays short.
func sealAttempt(s *sealer, name string, a *signInAttempt) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(a)
	return s.seal(name, bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
}

func (h *Handler) pruneSignInAttempts(w http.ResponseWriter, r *http.Request, s *sealer) {
	prefix := cookieName(r, signInCookieBase)
	type held struct {
		name   string
		issued int64
	}
	cookies := r.Cookies()
	if st := requestStateOf(r); st != nil {
		cookies = st.signInCookies // the request's own were removed for the upstream
	}
	var attempts []held
	for _, c := range cookies {
		if !strings.HasPrefix(c.Name, prefix) {
			continue
		}
		var a signInAttempt
		if plain, err := s.open(c.Name, c.Value); err == nil {
			_ = json.Unmarshal(plain, &a) // unreadable counts as oldest
		}
		attempts = append(attempts, held{c.Name, a.Issued})
	}
	if len(attempts) < maxSignInAttempts {
		return
	}
	sort.Slice(attempts, func(i, j int) bool { return attempts[i].issued < attempts[j].issued })
	for _, a := range attempts[:len(attempts)-maxSignInAttempts+1] {
		setCookie(w, r, a.name, "", -1)
	}
}

var (
	errNoSignInAttempt      = errors.New("no sign-in in progress in this browser for this state (expired, already used, or started elsewhere)")
	errSignInAttemptExpired = errors.New("sign-in took too long")
)

// takeSignInAttempt returns the attempt that the callback's state belongs
// to, and deletes its cookie: a state is good for one callback only
// (RFC 9700 §2.1, §4.7.1).
func (h *Handler) takeSignInAttempt(w http.ResponseWriter, r *http.Request, state string) (*signInAttempt, error) {
	if state == "" || len(state) > 512 {
		return nil, errNoSignInAttempt
	}
	name := signInCookieName(r, state)
	c, err := r.Cookie(name)
	if err != nil {
		return nil, errNoSignInAttempt
	}
	setCookie(w, r, name, "", -1)
	s, err := h.sealerFor(r.Context())
	if err != nil {
		return nil, err
	}
	plain, err := s.open(name, c.Value)
	if err != nil {
		return nil, errNoSignInAttempt
	}
	var a signInAttempt
	if err := json.Unmarshal(plain, &a); err != nil {
		return nil, errNoSignInAttempt
	}
	// The cookie name is derived from a hash prefix of the state; compare the
	// whole state, in constant time, before trusting it.
	if subtle.ConstantTimeCompare([]byte(a.State), []byte(state)) != 1 {
		return nil, errNoSignInAttempt
	}
	if now().Sub(time.Unix(a.Issued, 0)) > signInAttemptTTL {
		return nil, errSignInAttemptExpired
	}
	// A copy of the cookie replayed with the same state is refused even
	// before it expires.
	first, err := h.store.FirstUse(r.Context(), "state:"+stateDigest(state), signInAttemptTTL)
	if err != nil {
		return nil, err
	}
	if !first {
		return nil, errNoSignInAttempt
	}
	return &a, nil
}

func stateDigest(state string) string {
	sum := sha256.Sum256([]byte(state))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
