package pliro

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// An ID token is a snapshot: when a customer buys or cancels a plan in
// Pliro, the site learns it only by asking (shared/pliro-connect.md,
// "Update customer information"). The module asks Pliro's userinfo endpoint
// with the session's access token: when a signed-in customer is denied a
// page, on return from Pliro's checkout, and every refresh_interval for
// active sessions.

const (
	// deniedRefreshGap rate-limits userinfo calls per session for refreshes
	// that a request can trigger, so a denied reader reloading a premium
	// page cannot make the site call Pliro on every request.
	deniedRefreshGap = 30 * time.Second
	// maxUserinfoBytes bounds the userinfo response read.
	maxUserinfoBytes = 64 << 10
)

// errAccessTokenRejected: userinfo answered 401, the access token expired
// (Pliro issues no refresh tokens); silent re-authentication gets a new one.
var errAccessTokenRejected = errors.New("userinfo refused the access token")

// errSessionEnded: the session ended (sign-out, back-channel logout) while
// its claims were being refreshed; the refresh is dropped.
var errSessionEnded = errors.New("session ended during the refresh")

// refreshClaims asks userinfo for the customer's current claims and saves
// them, unless a refresh of this session is running, or ran within the last
// deniedRefreshGap. Rechecks on return from checkout are counted apart, so
// that the one right after a denied refresh still happens; each kind is
// limited to one call per deniedRefreshGap.
//
// It returns the session to use for this request: the refreshed one, or s
// itself when nothing changed. Pliro being down or slow never signs anyone
// out: the last known claims stay, and err says why they were kept.
func (h *Handler) refreshClaims(ctx context.Context, key string, s *Session, recheck bool) (*Session, error) {
	t := now()
	last := s.UserinfoTriedAt
	if recheck {
		last = s.RecheckedAt
	}
	if t.Sub(last) < deniedRefreshGap {
		return s, nil
	}
	if _, busy := h.refreshing.LoadOrStore(key, struct{}{}); busy {
		return s, nil
	}
	defer h.refreshing.Delete(key)

	next := *s
	next.UserinfoTriedAt = t
	if recheck {
		next.RecheckedAt = t
	}
	claims, err := h.fetchUserinfo(ctx, s.AccessToken)
	result := resultSuccess
	switch {
	case errors.Is(err, errAccessTokenRejected):
		result = resultTokenRejected
		next.NeedsReauth = true
	case err != nil:
		result = resultError
		h.logger.Warn("refreshing customer information; keeping the last known claims",
			zap.String("customer_id", s.Subject), zap.Error(err))
	case claims.Subject != s.Subject:
		// OIDC Core §5.3.2: the userinfo sub must equal the ID token's, or
		// the response is not about this customer and must not be used.
		result = resultSubjectMismatch
		err = fmt.Errorf("userinfo sub %q is not the session's %q", claims.Subject, s.Subject)
		h.logger.Warn("ignoring userinfo response", zap.String("customer_id", s.Subject), zap.Error(err))
	default:
		// A claim Pliro omits has no value any more (a cancelled plan),
		// so every field is replaced, not merged.
		next.Email, next.Name = claims.Email, claims.Name
		next.Plan, next.PlanSlugs = claims.Plan, []string(claims.PlanSlugs)
		next.Extra = claims.Extra
		next.ClaimsAt = t
	}
	metrics.userinfo.WithLabelValues(result).Inc()
	alive, saveErr := h.store.Replace(ctx, key, &next, h.deadline(&next))
	if saveErr != nil {
		return s, fmt.Errorf("saving refreshed session: %w", saveErr)
	}
	if !alive {
		return s, errSessionEnded
	}
	return &next, err
}

// fetchUserinfo calls Pliro's userinfo endpoint (OIDC Core §5.3) with a
// short timeout, so a slow Pliro holds the customer's request only briefly.
func (h *Handler) fetchUserinfo(ctx context.Context, accessToken string) (*customerClaims, error) {
	if accessToken == "" {
		return nil, errAccessTokenRejected
	}
	e, err := h.provider.get(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(withEndpoint(ctx, endpointUserinfo), time.Duration(h.UserinfoTimeout))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.userinfo, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+accessToken)
	req.Header.Set("Accept", "application/json")
	resp, err := h.provider.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("calling userinfo: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return nil, errAccessTokenRejected
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("userinfo answered %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxUserinfoBytes))
	if err != nil {
		return nil, fmt.Errorf("reading userinfo: %w", err)
	}
	c, err := parseCustomerClaims(body)
	if err != nil {
		return nil, fmt.Errorf("decoding userinfo: %w", err)
	}
	return c, nil
}
