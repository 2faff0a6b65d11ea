package pliro

import (
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Silent re-authentication: a top-level navigation is sent to Pliro with
// prompt=none and comes straight back, with fresh tokens and claims when the
// customer is still signed in to Pliro, or with login_required when not
// (OIDC Core §3.1.2.1, §3.1.2.6). Only whole-tab GET navigations are ever
// redirected: POSTs, XHR, fetch, iframes and assets are never broken by a
// surprise redirect.

const (
	// recheckParam marks the continue_url that Pliro's checkout sends the
	// customer back to: the claims are refreshed before the page is served,
	// so a plan just bought gives access at once.
	recheckParam = "pliro_recheck"
	// minReauthGap keeps silent re-authentications of one session at least
	// this far apart, whatever goes wrong: never a redirect loop.
	minReauthGap = time.Minute
	// autoSignInCookie marks a browser that had its auto sign-in attempt
	// ("1"), or that is known to keep cookies and may have one (the probe).
	autoSignInCookie = "pliro_auto"
	autoSignInProbe  = "probe"
)

// keepFresh keeps a signed-in customer's claims current. It returns the
// session to use for this request, and redirected=true when it answered the
// request itself (silent re-authentication, or the clean URL after a
// recheck).
func (h *Handler) keepFresh(w http.ResponseWriter, r *http.Request, key string, s *Session) (*Session, bool) {
	// The cheap tests first: most requests are neither marked nor due for
	// re-authentication, and then the headers need not be read.
	if strings.Contains(r.URL.RawQuery, recheckParam) && isTopLevelNavigation(r) && r.URL.Query().Has(recheckParam) {
		return h.recheckAfterCheckout(w, r, key, s), true
	}
	if h.reauthDue(s) && isTopLevelNavigation(r) && h.startSilentReauth(w, r, key, s, originalRequestURI(r)) {
		return s, true
	}
	if h.RefreshInterval > 0 && now().Sub(s.ClaimsAt) >= time.Duration(h.RefreshInterval) {
		fresh, err := h.refreshClaims(r.Context(), key, s, false)
		if err != nil {
			h.logger.Debug("periodic refresh", zap.Error(err))
		}
		s = fresh
	}
	return s, false
}

// reauthDue: userinfo refused the access token, or reauth_interval passed.
func (h *Handler) reauthDue(s *Session) bool {
	since := now().Sub(s.ReauthAt)
	if since < minReauthGap {
		return false
	}
	return s.NeedsReauth || (h.ReauthInterval > 0 && since >= time.Duration(h.ReauthInterval))
}

// startSilentReauth records the attempt (so that a failure cannot loop) and
// sends the browser to Pliro with prompt=none. It reports false, and the
// request goes on as it is, when the attempt cannot start (Pliro or the
// store unreachable).
func (h *Handler) startSilentReauth(w http.ResponseWriter, r *http.Request, key string, s *Session, returnTo string) bool {
	next := *s
	next.ReauthAt, next.NeedsReauth = now(), false
	if alive, err := h.store.Replace(r.Context(), key, &next, h.deadline(&next)); err != nil || !alive {
		if err != nil {
			h.logger.Warn("recording silent re-authentication", zap.Error(err))
		}
		return false
	}
	if err := h.startSignIn(w, r, returnTo, true); err != nil {
		h.logger.Warn("starting silent re-authentication", zap.Error(err))
		return false
	}
	return true
}

// recheckAfterCheckout refreshes the claims of a customer coming back from
// Pliro's checkout (continue_url carries recheckParam) and sends the browser
// to the same page without the marker. If the access token has expired, a
// silent re-authentication gets fresh claims instead.
func (h *Handler) recheckAfterCheckout(w http.ResponseWriter, r *http.Request, key string, s *Session) *Session {
	clean := withoutRecheck(originalRequestURI(r))
	fresh, err := h.refreshClaims(r.Context(), key, s, true)
	if err != nil {
		h.logger.Debug("refresh after checkout", zap.Error(err))
	}
	if fresh.NeedsReauth && h.startSilentReauth(w, r, key, fresh, clean) {
		return fresh
	}
	http.Redirect(w, r, clean, http.StatusSeeOther)
	return fresh
}

// withoutRecheck removes the recheck marker from a request URI.
func withoutRecheck(requestURI string) string {
	u, err := url.Parse(requestURI)
	if err != nil {
		return "/"
	}
	q := u.Query()
	q.Del(recheckParam)
	u.RawQuery = q.Encode()
	return u.RequestURI()
}

// continueURL is where Pliro's checkout should send the customer back: this
// page, absolute (Pliro allow-lists hosts), marked for a recheck.
func continueURL(r *http.Request) string {
	u, err := url.Parse(originalRequestURI(r))
	if err != nil {
		return siteURL(r, "/")
	}
	q := u.Query()
	q.Set(recheckParam, "1")
	u.RawQuery = q.Encode()
	return siteURL(r, u.RequestURI())
}

// silentSignInRefused handles Pliro's error answer to prompt=none. When the
// customer is no longer signed in to Pliro (login_required), or would have
// to interact (consent_required, interaction_required,
// account_selection_required; OIDC Core §3.1.2.6), the local session ends
// too and the customer continues as anonymous; a protected page then starts
// an ordinary sign-in. Any other error keeps the session: Pliro hiccupped.
// It returns the result for the metrics.
func (h *Handler) silentSignInRefused(w http.ResponseWriter, r *http.Request, a *signInAttempt, code string) string {
	result := resultError
	switch code {
	case "login_required", "consent_required", "interaction_required", "account_selection_required":
		if key, ok := h.sessionKeyFromRequest(r); ok {
			if err := h.store.Delete(r.Context(), key); err != nil {
				h.logger.Warn("ending session after silent re-authentication", zap.Error(err))
			}
			h.clearSessionCookie(w, r)
			h.logger.Info("customer no longer signed in to the provider; session ended", zap.String("reason", code))
		}
		result = resultLoginRequired
	default:
		h.logger.Warn("silent re-authentication failed; keeping the session", zap.String("error", sanitizeErrorCode(code)))
	}
	http.Redirect(w, r, a.ReturnTo, http.StatusSeeOther)
	return result
}

// autoSignInDue: auto sign-in is on, this is a browser's top-level
// navigation that says so with Fetch Metadata (crawlers, which send none,
// are never redirected), the browser keeps cookies, and it has not had its
// attempt within the auto_sign_in period. Whether it keeps cookies is
// learned on its first navigation, which only sets a probe cookie: a
// browser that keeps none (private modes, preview bots) would otherwise be
// sent to Pliro on every page, and its callbacks would find no attempt.
func (h *Handler) autoSignInDue(w http.ResponseWriter, r *http.Request) bool {
	if h.AutoSignIn <= 0 || r.Header.Get("Sec-Fetch-Mode") != "navigate" || !isTopLevelNavigation(r) {
		return false
	}
	name := cookieName(r, autoSignInCookie)
	c, err := r.Cookie(name)
	if err != nil {
		setCookie(w, r, name, autoSignInProbe, int(time.Duration(h.AutoSignIn).Seconds()))
		return false
	}
	return c.Value == autoSignInProbe
}

// startAutoSignIn tries a silent sign-in for an anonymous visitor who may
// be signed in to Pliro already, once per browser per auto_sign_in period
// (the marker cookie: never a loop). It reports false, and the visitor stays
// anonymous on this page, when Pliro is unreachable.
func (h *Handler) startAutoSignIn(w http.ResponseWriter, r *http.Request) bool {
	setCookie(w, r, cookieName(r, autoSignInCookie), "1", int(time.Duration(h.AutoSignIn).Seconds()))
	if err := h.startSignIn(w, r, originalRequestURI(r), true); err != nil {
		h.logger.Debug("auto sign-in skipped", zap.Error(err))
		return false
	}
	return true
}
