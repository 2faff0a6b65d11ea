package pliro

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/textproto"
	"strings"
	"time"
)

// Session is what the module knows about one signed-in customer. It lives on
// the server, in a Store; the browser's cookie holds only a random ID whose
// SHA-256 is the store key, so a leaked store does not leak usable cookies.
//
// A *Session taken from a Store is never modified: an update builds a new
// value and saves it, so readers need no lock.
type Session struct {
	// Subject is the customer's Pliro ID (the ID token's sub claim).
	Subject string `json:"sub"`
	// ProviderSID is Pliro's session ID (the sid claim), used by
	// back-channel logout to find this session.
	ProviderSID string `json:"sid,omitempty"`

	Email     string   `json:"email,omitempty"`
	Name      string   `json:"name,omitempty"`
	Plan      string   `json:"plan,omitempty"`
	PlanSlugs []string `json:"plan_slugs,omitempty"`
	// Extra holds other simple claims, for claim rules (usually none).
	Extra map[string][]string `json:"extra,omitempty"`

	// IDToken is the latest ID token, sent as id_token_hint at sign-out.
	IDToken string `json:"id_token,omitempty"`
	// AccessToken is the opaque token for Pliro's userinfo endpoint.
	AccessToken string `json:"access_token,omitempty"`

	// Created is the sign-in time; the session ends at Created+max_lifetime.
	Created time.Time `json:"created"`
	// LastSeen moves forward as the customer uses the site (at most once a
	// minute); the session ends after idle_timeout without a visit.
	LastSeen time.Time `json:"last_seen"`

	// ClaimsAt is when the claims were last learned (sign-in or userinfo).
	ClaimsAt time.Time `json:"claims_at"`
	// UserinfoTriedAt is the last call to userinfo, successful or not: it
	// rate-limits calls per session.
	UserinfoTriedAt time.Time `json:"userinfo_tried_at,omitzero"`
	// RecheckedAt is the last refresh on return from checkout.
	RecheckedAt time.Time `json:"rechecked_at,omitzero"`
	// NeedsReauth is set when userinfo refused the access token: the next
	// navigation re-authenticates silently (prompt=none) for fresh tokens.
	NeedsReauth bool `json:"needs_reauth,omitempty"`
	// ReauthAt is the last sign-in or silent re-authentication attempt.
	ReauthAt time.Time `json:"reauth_at"`
}

// Store keeps sessions on the server. Semantics (as in alexedwards/scs):
// a missing, expired or unknown key is found=false with a nil error; errors
// are for system failures only; deleting a missing key is not an error.
type Store interface {
	// Load returns the session saved under key, unless its deadline passed.
	Load(ctx context.Context, key string) (s *Session, found bool, err error)
	// Save stores s under key until deadline, replacing any earlier value,
	// and indexes it by s.Subject and s.ProviderSID.
	Save(ctx context.Context, key string, s *Session, deadline time.Time) error
	// Replace is Save for a session that must still exist: it stores s
	// only if a session is saved under key now, and reports whether it did.
	// Updates of a live session (fresh claims, a silent re-authentication
	// starting) use it, so that a session ended meanwhile (sign-out,
	// back-channel logout) stays ended. It keeps a later LastSeen and
	// deadline that a visit (Touch) wrote since s was read.
	Replace(ctx context.Context, key string, s *Session, deadline time.Time) (bool, error)
	// Touch records a visit: it sets LastSeen of the session saved under
	// key to seen and its deadline to deadline, and leaves the rest as it
	// is in the store now, so that claims refreshed by a concurrent request
	// are kept. It reports whether a session was there.
	Touch(ctx context.Context, key string, seen, deadline time.Time) (bool, error)
	// Delete ends the session saved under key.
	Delete(ctx context.Context, key string) error
	// DeleteByProviderSID ends every session that carries Pliro's sid and,
	// when subject is not empty, also that subject. It returns how many
	// sessions it ended.
	DeleteByProviderSID(ctx context.Context, sid, subject string) (int, error)
	// DeleteBySubject ends every session of one customer.
	DeleteBySubject(ctx context.Context, subject string) (int, error)
	// FirstUse records that key was used, for ttl, and reports whether this
	// is its first use: the replay cache for sign-in states and logout tokens.
	FirstUse(ctx context.Context, key string, ttl time.Duration) (bool, error)
	// Forget undoes FirstUse for key (the use did not happen).
	Forget(ctx context.Context, key string) error
	// MarkSIDEnded remembers, for ttl, that Pliro ended its session sid at
	// the time at (by Pliro's clock), for SIDEndedAt.
	MarkSIDEnded(ctx context.Context, sid string, at time.Time, ttl time.Duration) error
	// SIDEndedAt returns when Pliro ended its session sid, if that is
	// remembered.
	SIDEndedAt(ctx context.Context, sid string) (time.Time, bool, error)
}

// sessionIDBytes is the entropy of a session ID: 256 bits, as scs does.
const sessionIDBytes = 32

// newSessionID returns a fresh random session ID for the cookie and the store
// key that belongs to it.
func newSessionID() (cookieValue, key string) {
	var b [sessionIDBytes]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	cookieValue = base64.RawURLEncoding.EncodeToString(b[:])
	return cookieValue, storeKey(cookieValue)
}

// storeKey is the store key for a session cookie value: its SHA-256, so the
// store never holds a value that could be replayed as a cookie.
func storeKey(cookieValue string) string {
	// On the request path: the stack buffers spare two allocations.
	var in [64]byte
	sum := sha256.Sum256(append(in[:0], cookieValue...))
	var out [43]byte // base64.RawURLEncoding.EncodedLen(sha256.Size)
	base64.RawURLEncoding.Encode(out[:], sum[:])
	return string(out[:])
}

// sessionKeyFromRequest returns the store key named by the request's session
// cookie, or false when there is no well-formed one. A cookie that is not
// exactly an encoded 32-byte ID is ignored unread: it cannot be ours.
func (h *Handler) sessionKeyFromRequest(r *http.Request) (string, bool) {
	name := h.sessionCookieName(r)
	// The Cookie header is scanned in place: net/http's Request.Cookie
	// parses every cookie of the request into a new slice, and this runs on
	// every request.
	for _, line := range r.Header["Cookie"] {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			value, ok := strings.CutPrefix(textproto.TrimString(part), name)
			if ok && len(value) > 0 && value[0] == '=' && isSessionID(value[1:]) {
				return storeKey(value[1:]), true
			}
		}
	}
	return "", false
}

// isSessionID reports whether v is a session ID as newSessionID makes them:
// 32 bytes in unpadded base64url.
func isSessionID(v string) bool {
	if len(v) != base64.RawURLEncoding.EncodedLen(sessionIDBytes) {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// deadline is when s ends: after idle_timeout without a visit, and at the
// latest max_lifetime after sign-in.
func (h *Handler) deadline(s *Session) time.Time {
	idle := s.LastSeen.Add(time.Duration(h.IdleTimeout))
	absolute := s.Created.Add(time.Duration(h.MaxLifetime))
	if idle.Before(absolute) {
		return idle
	}
	return absolute
}

// loadSession returns the request's session, or nil when the visitor is
// anonymous. A broken, unknown or expired cookie is anonymous, never an
// error; only a failing store is.
func (h *Handler) loadSession(r *http.Request) (s *Session, key string, err error) {
	key, ok := h.sessionKeyFromRequest(r)
	if !ok {
		return nil, "", nil
	}
	s, found, err := h.store.Load(r.Context(), key)
	if err != nil || !found {
		return nil, key, err
	}
	now := now()
	if !now.Before(h.deadline(s)) {
		return nil, key, nil
	}
	// Slide the idle timeout, but write at most once a minute per session
	// so that reading a page costs no store write. Only the visit is
	// written: a copy of the whole session could undo a refresh of its
	// claims that another request saved since this one read it.
	if now.Sub(s.LastSeen) > sessionTouchInterval {
		touched := *s
		touched.LastSeen = now
		switch alive, err := h.store.Touch(r.Context(), key, now, h.deadline(&touched)); {
		case err != nil:
			h.storeErrors.warn(h.logger, "extending session", err)
		case !alive:
			return nil, key, nil // ended while this request was reading it
		default:
			s = &touched
		}
	}
	return s, key, nil
}

// sessionTouchInterval bounds how often a session's LastSeen is written.
const sessionTouchInterval = time.Minute

// now is the clock; tests move it.
var now = time.Now
