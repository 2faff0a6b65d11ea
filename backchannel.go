package pliro

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"
)

// Back-Channel Logout 1.0: Pliro POSTs a signed logout token when a customer
// signs out on Pliro's side; the module ends the matching sessions.

const (
	// maxLogoutBody bounds the request body: a logout token is a few hundred
	// bytes, so anything much larger is refused unread.
	maxLogoutBody = 16 << 10
	// backchannelLogoutEvent is the event a logout token must carry
	// (Back-Channel Logout 1.0 §2.4).
	backchannelLogoutEvent = "http://schemas.openid.net/event/backchannel-logout"
)

// serveBackchannelLogout answers Pliro's sign-out notification: 200 with
// Cache-Control: no-store when the token is valid (also when no session here
// matches it: the customer may have signed in on another instance or not at
// all), 400 with a JSON error otherwise (Back-Channel Logout 1.0 §2.8).
func (h *Handler) serveBackchannelLogout(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return writeLogoutError(w, http.StatusMethodNotAllowed, "invalid_request", "use POST")
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		return h.refuseLogout(w, http.StatusBadRequest, resultInvalidRequest, errors.New("content type must be application/x-www-form-urlencoded"))
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxLogoutBody)
	if err := r.ParseForm(); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return h.refuseLogout(w, http.StatusRequestEntityTooLarge, resultInvalidRequest, errors.New("request body too large"))
		}
		return h.refuseLogout(w, http.StatusBadRequest, resultInvalidRequest, fmt.Errorf("reading form: %w", err))
	}
	raw := r.PostForm.Get("logout_token")
	if raw == "" {
		return h.refuseLogout(w, http.StatusBadRequest, resultInvalidRequest, errors.New("no logout_token"))
	}
	lt, err := h.verifyLogoutToken(r.Context(), raw)
	if err != nil {
		return h.refuseLogout(w, http.StatusBadRequest, resultInvalidToken, err)
	}
	// A logout token is good once (Back-Channel Logout 1.0 §2.6 step 8).
	// The replay cache outlives the acceptance window, after which an old
	// token is refused for its iat anyway.
	first, err := h.store.FirstUse(r.Context(), "logout:"+lt.replayKey, h.logoutReplayTTL())
	if err != nil {
		return h.refuseLogout(w, http.StatusBadRequest, resultStoreError, fmt.Errorf("checking replay: %w", err))
	}
	if !first {
		return h.refuseLogout(w, http.StatusBadRequest, resultReplay, errors.New("logout token replayed"))
	}

	// With a sid, end the sessions of that Pliro session (of that customer,
	// when sub is given too); with only sub, every session of the customer
	// (Back-Channel Logout 1.0 §2.7).
	var ended int
	if lt.SID != "" {
		// Mark the Pliro session as ended before ending its sessions here: a
		// sign-in with this sid still in flight checks the mark after saving
		// its session (see finishSignIn), so either this deletion finds that
		// session or that check finds the mark.
		if err = h.store.MarkSIDEnded(r.Context(), lt.SID, lt.IssuedAt, endedSIDTTL); err == nil {
			ended, err = h.store.DeleteByProviderSID(r.Context(), lt.SID, lt.Subject)
		}
	} else {
		ended, err = h.store.DeleteBySubject(r.Context(), lt.Subject)
	}
	if err != nil {
		// §2.8: if the logout failed, the RP must answer 400. The token was
		// not used: forget it, so that a retry of the same token can succeed.
		_ = h.store.Forget(context.WithoutCancel(r.Context()), "logout:"+lt.replayKey)
		return h.refuseLogout(w, http.StatusBadRequest, resultStoreError, fmt.Errorf("ending sessions: %w", err))
	}
	metrics.backchannel.WithLabelValues(resultSuccess).Inc()
	h.logger.Info("back-channel logout",
		zap.String("customer_id", lt.Subject), zap.Int("sessions_ended", ended))
	h.events.emit(eventBackchannelLogout, map[string]any{"customer_id": lt.Subject, "sid": lt.SID, "sessions_ended": ended})
	w.WriteHeader(http.StatusOK)
	return nil
}

// refuseLogout counts and logs why a notification was refused (never the
// token) and answers with a JSON error. The answer says what was wrong with
// the request or token, but never internal details: store and network
// errors (addresses, Redis messages) stay in the log.
func (h *Handler) refuseLogout(w http.ResponseWriter, status int, result string, reason error) error {
	metrics.backchannel.WithLabelValues(result).Inc()
	h.logger.Warn("refusing back-channel logout", zap.Int("status", status), zap.String("reason", result), zap.Error(reason))
	description := reason.Error()
	switch {
	case result == resultStoreError:
		description = "the sessions could not be ended; try again"
	case errors.Is(reason, errLogoutKeysUnavailable):
		description = "the provider's signing keys could not be checked"
	}
	return writeLogoutError(w, status, "invalid_request", description)
}

// errLogoutKeysUnavailable: the token could not be checked because the
// provider (discovery, JWKS) did not answer.
var errLogoutKeysUnavailable = errors.New("provider keys unavailable")

func writeLogoutError(w http.ResponseWriter, status int, code, description string) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": description})
}

// logoutToken is a verified logout token's meaning.
type logoutToken struct {
	Subject   string
	SID       string
	IssuedAt  time.Time
	replayKey string // jti, or the token's hash when Pliro sends no jti
}

// verifyLogoutToken performs the validation of Back-Channel Logout 1.0 §2.6
// plus Pliro's documented checks. go-oidc's VerifyLogout is not used because
// it refuses tokens without exp and jti, which Pliro does not document; every
// check it makes is made here too.
func (h *Handler) verifyLogoutToken(ctx context.Context, raw string) (*logoutToken, error) {
	if len(raw) > maxLogoutBody {
		return nil, errors.New("logout token too large")
	}
	// §2.6 step 3 / §2.4: alg none is forbidden; only ES256 and RS256 are
	// accepted (no HMAC: RFC 8725 §3.1). A JWT is always in compact
	// serialization (RFC 7519 §1): the JSON one is another encoding of the
	// same token, a way to replay it as new bytes.
	jws, err := jose.ParseSignedCompact(raw, signingAlgs)
	if err != nil {
		return nil, fmt.Errorf("parsing logout token: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("logout token must carry exactly one signature")
	}
	// Explicit typing keeps an ID token or another JWT from being accepted
	// as a logout token (§2.4, RFC 8725 §3.11; Pliro sends typ logout+jwt).
	// typ is a media type, case-insensitive, "application/" optional (RFC
	// 7515 §4.1.9).
	typ, _ := jws.Signatures[0].Protected.ExtraHeaders[jose.HeaderType].(string)
	if strings.TrimPrefix(strings.ToLower(typ), "application/") != "logout+jwt" {
		return nil, fmt.Errorf("logout token header typ is %q, want logout+jwt", typ)
	}
	e, err := h.provider.get(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errLogoutKeysUnavailable, err)
	}
	// §2.6 step 2: the signature, with Pliro's keys (JWKS or pinned).
	payload, err := e.keys.VerifySignature(ctx, raw)
	if errors.Is(err, errFetchingKeys) {
		return nil, fmt.Errorf("%w: %v", errLogoutKeysUnavailable, err)
	}
	if err != nil {
		return nil, fmt.Errorf("verifying logout token signature: %w", err)
	}
	var c struct {
		Issuer   string                     `json:"iss"`
		Subject  string                     `json:"sub"`
		Audience logoutAudience             `json:"aud"`
		IssuedAt *float64                   `json:"iat"`
		Expiry   *float64                   `json:"exp"`
		JTI      string                     `json:"jti"`
		SID      string                     `json:"sid"`
		Events   map[string]json.RawMessage `json:"events"`
		Nonce    json.RawMessage            `json:"nonce"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, fmt.Errorf("reading logout token claims: %w", err)
	}
	// §2.6 step 4 (OIDC Core §3.1.3.7 steps 2-3): issuer and audience.
	if c.Issuer != h.Issuer {
		return nil, fmt.Errorf("logout token issuer %q is not %q", c.Issuer, h.Issuer)
	}
	if !slices.Contains([]string(c.Audience), h.ClientID) {
		return nil, errors.New("logout token is not addressed to this client (aud)")
	}
	// §2.6 step 4, §4.5: iat present, not in the future, and recent (Pliro:
	// reject tokens older than about 5 minutes).
	skew := h.clockSkew()
	t := now()
	if c.IssuedAt == nil {
		return nil, errors.New("logout token has no iat")
	}
	iat := time.Unix(int64(*c.IssuedAt), 0)
	if iat.After(t.Add(skew)) {
		return nil, errors.New("logout token issued in the future (check the clocks)")
	}
	if t.Sub(iat) > time.Duration(h.LogoutTokenMaxAge)+skew {
		return nil, fmt.Errorf("logout token is older than %s", time.Duration(h.LogoutTokenMaxAge))
	}
	// §2.4: exp, when present, must not have passed.
	if c.Expiry != nil && !time.Unix(int64(*c.Expiry), 0).Add(skew).After(t) {
		return nil, errors.New("logout token expired")
	}
	// §2.6 step 6: the back-channel logout event, whose value is a JSON
	// object.
	if ev, ok := c.Events[backchannelLogoutEvent]; !ok || len(ev) == 0 || ev[0] != '{' {
		return nil, errors.New("logout token lacks the back-channel logout event")
	}
	// §2.6 step 7: no nonce, so an ID token cannot pass as a logout token.
	if len(c.Nonce) > 0 {
		return nil, errors.New("logout token must not contain a nonce")
	}
	// §2.6 step 5: sub, sid, or both.
	if c.Subject == "" && c.SID == "" {
		return nil, errors.New("logout token has neither sub nor sid")
	}
	lt := &logoutToken{Subject: c.Subject, SID: c.SID, IssuedAt: iat}
	if c.JTI != "" {
		// The jti is unique per issuer; prefix it so no other key collides.
		lt.replayKey = "jti:" + c.JTI
	} else {
		// Without a jti, the token is known by its signed claims, never by
		// its bytes: the same claims verify in other bytes too (ECDSA's
		// (r, n-s), unused base64 bits, line breaks), and each would pass
		// the replay check as new (§2.6 step 8).
		sum := sha256.Sum256(payload)
		lt.replayKey = "claims:" + base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return lt, nil
}

// logoutAudience is the aud claim: one string or a list of strings (RFC 7519
// §4.1.3). Unlike stringOrList, one string is one audience, never split:
// aud "other-app news" is not addressed to client "news".
type logoutAudience []string

func (a *logoutAudience) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*a = logoutAudience{one}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(a))
}

// endIfLoggedOutMeanwhile ends the session just saved under key when Pliro
// ended its session sid while the sign-in was in flight: Pliro issued the
// code, then sent a back-channel logout that found no session here yet. The
// logout marks the sid before ending sessions, and this check runs after the
// save, so one of the two sees the other; a session must not outlive its
// Pliro session (Back-Channel Logout 1.0 §2.7). Only an authentication from
// before the logout is refused: should Pliro reuse a sid, a sign-in after it
// still works (without auth_time nothing tells them apart, and the sign-in
// is refused). The answer is an error page, not a redirect to the page,
// which could start the same refused sign-in again and loop.
func (h *Handler) endIfLoggedOutMeanwhile(ctx context.Context, key, sid string, authTime time.Time) (result string, err error) {
	if sid == "" {
		return "", nil
	}
	endedAt, marked, err := h.store.SIDEndedAt(ctx, sid)
	ended := marked && !authTime.After(endedAt)
	if err == nil && !ended {
		return "", nil
	}
	if delErr := h.store.Delete(context.WithoutCancel(ctx), key); delErr != nil {
		h.logger.Warn("ending a session of an ended Pliro session", zap.Error(delErr))
	}
	if err != nil {
		return resultStoreError, caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("checking for a back-channel logout: %w", err))
	}
	return resultSessionEnded, caddyhttp.Error(http.StatusUnauthorized,
		errors.New("the Pliro session ended during sign-in (back-channel logout); sign in again"))
}

// endedSIDTTL is how long an ended Pliro session is remembered: as long as
// a sign-in attempt lives, the longest a callback can come after Pliro
// issued its code, plus a margin for the token exchange.
const endedSIDTTL = signInAttemptTTL + time.Minute

// logoutReplayTTL keeps a seen token in the replay cache for longer than it
// could be accepted.
func (h *Handler) logoutReplayTTL() time.Duration {
	return time.Duration(h.LogoutTokenMaxAge) + 2*h.clockSkew() + time.Minute
}
