package pliro

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/coreos/go-oidc/v3/oidc"
	"go.uber.org/zap"
	"golang.org/x/oauth2"
)

// ServeHTTP is the module's front door. Requests for the module's own
// endpoints are answered here; every other request learns who the customer
// is (placeholders, optional headers) and goes on to the next handler, where
// pliro_require decides whether the route needs a signed-in customer.
//
// The sign-in flow, in the order a customer meets it:
//  1. startSignIn: a protected page, or the sign-in path, sends the browser
//     to Pliro's authorize endpoint with state, nonce and PKCE.
//  2. serveCallback: Pliro sends the browser back with a code; the module
//     checks the state, exchanges the code, verifies the ID token and
//     starts a brand-new session.
//  3. ServeHTTP on the next requests: the session cookie becomes the
//     customer's identity, kept fresh by userinfo (userinfo.go) and by
//     silent re-authentication (silent.go).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	switch r.URL.Path {
	case h.callbackPath:
		return h.serveCallback(w, r)
	case h.SignInPath:
		return h.serveSignIn(w, r)
	case h.SignOutPath:
		return h.serveSignOut(w, r)
	case h.BackchannelLogoutPath:
		return h.serveBackchannelLogout(w, r)
	}

	// Identity headers come only from this module: whatever the client sent
	// under the same names is removed first, signed in or not.
	h.removeClientIdentityHeaders(r)
	s, key, storeErr := h.loadSession(r)
	if storeErr != nil {
		// The store is down: the site goes on serving public pages to an
		// anonymous visitor; pliro_require answers 503 on protected ones.
		h.storeErrors.warn(h.logger, "loading session", storeErr)
	}
	switch {
	case s != nil:
		var redirected bool
		s, redirected = h.keepFresh(w, r, key, s)
		if redirected {
			return nil
		}
	case storeErr == nil && h.autoSignInDue(w, r) && h.startAutoSignIn(w, r):
		return nil
	}
	st := &requestState{
		handler: h, session: s, key: key, storeErr: storeErr,
		signInCookies: removeSignInCookies(r),
	}
	h.setIdentity(r, st)
	caddyhttp.SetVar(r.Context(), requestStateVar, st)
	return next.ServeHTTP(w, r)
}

// removeSignInCookies keeps the sign-in attempt cookies (up to 5 of 2 KiB,
// for 10 minutes) from riding to the upstream on every request, where they
// mean nothing and could push the Cookie header past its line limit. It
// returns them, for pliro_require's sign-in further down the route.
func removeSignInCookies(r *http.Request) []*http.Cookie {
	if !strings.Contains(r.Header.Get("Cookie"), signInCookieBase) {
		return nil
	}
	var kept []string
	var removed []*http.Cookie
	for _, c := range r.Cookies() {
		if strings.Contains(c.Name, signInCookieBase) {
			removed = append(removed, c)
		} else {
			kept = append(kept, c.String())
		}
	}
	if len(kept) == 0 {
		r.Header.Del("Cookie")
	} else {
		r.Header.Set("Cookie", strings.Join(kept, "; "))
	}
	return removed
}

// requestState is what ServeHTTP learned, kept in the request's vars for
// pliro_require further down the route.
type requestState struct {
	handler       *Handler
	session       *Session // nil: anonymous
	key           string   // store key of the session cookie, if any
	storeErr      error
	signInCookies []*http.Cookie // attempt cookies, kept from the upstream
}

const requestStateVar = "pliro.request"

func requestStateOf(r *http.Request) *requestState {
	st, _ := caddyhttp.GetVar(r.Context(), requestStateVar).(*requestState)
	return st
}

// serveSignIn starts a sign-in from a link or button anywhere on the site:
// GET /sign-in?return_to=/article/7. A customer who is already signed in goes
// straight to return_to.
func (h *Handler) serveSignIn(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return methodNotAllowed(w, http.MethodGet, http.MethodHead)
	}
	returnTo, ok := safeReturnTo(r.URL.Query().Get("return_to"))
	if !ok {
		returnTo = "/"
	}
	if s, _, _ := h.loadSession(r); s != nil {
		http.Redirect(w, r, returnTo, http.StatusSeeOther)
		return nil
	}
	return h.startSignIn(w, r, returnTo, false)
}

// startSignIn sends the browser to Pliro's authorize endpoint (OIDC Core
// §3.1.2.1) and remembers the attempt in a sealed cookie. A silent attempt
// asks with prompt=none: Pliro answers at once, with a code when the
// customer still has a Pliro session, or with login_required (§3.1.2.6).
func (h *Handler) startSignIn(w http.ResponseWriter, r *http.Request, returnTo string, silent bool) error {
	// The browser comes back only to a path on this site, whoever the caller:
	// for a protected page returnTo is the request's own URI, and a request
	// for //evil.example must not end as Location: //evil.example.
	if safe, ok := safeReturnTo(returnTo); ok {
		returnTo = safe
	} else {
		returnTo = "/"
	}
	e, err := h.provider.get(r.Context())
	if err != nil {
		return caddyhttp.Error(http.StatusBadGateway, err)
	}
	a := &signInAttempt{
		// state: CSRF protection, bound to this browser (RFC 9700 §4.7.1).
		State: randomToken(32),
		// nonce: binds the ID token to this attempt, against replayed or
		// injected tokens (OIDC Core §3.1.2.1, §15.5.2).
		Nonce:    randomToken(32),
		ReturnTo: returnTo,
		Issued:   now().Unix(),
		Silent:   silent,
	}
	opts := []oauth2.AuthCodeOption{oidc.Nonce(a.Nonce)}
	if silent {
		opts = append(opts, oauth2.SetAuthURLParam("prompt", "none"))
	}
	if e.pkce {
		// PKCE binds the code to this attempt: a stolen or injected code is
		// useless without the verifier (RFC 7636; RFC 9700 §2.1.1).
		a.Verifier = oauth2.GenerateVerifier()
		opts = append(opts, oauth2.S256ChallengeOption(a.Verifier))
	}
	if err := h.saveSignInAttempt(w, r, a); err != nil {
		if !silent {
			// Only for the 503 the visitor sees: a silent attempt that
			// cannot start is skipped, and the page served as it is.
			w.Header().Set("Retry-After", "5")
		}
		return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("starting sign-in: %w", err))
	}
	cfg := h.provider.oauth2Config(e, h.clientSecret, h.redirectURI(r), h.Scopes, h.authStyle())
	http.Redirect(w, r, cfg.AuthCodeURL(a.State, opts...), http.StatusFound)
	return nil
}

// serveCallback finishes a sign-in: Pliro sent the browser back to the
// redirect URI with ?code=...&state=... (or ?error=...). Every callback is
// counted by result, and logged with the reason when it fails.
func (h *Handler) serveCallback(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return methodNotAllowed(w, http.MethodGet)
	}
	silent, result, err := h.finishSignIn(w, r)
	if silent && err != nil && result != resultBadState && result != resultStoreError {
		// A silent attempt is a detour the visitor never asked for: when it
		// fails, they get the page they were going to, not an error.
		h.logger.Info("silent sign-in failed; continuing", zap.String("reason", result), zap.Error(err))
		err = nil
	}
	if silent {
		metrics.silentReauths.WithLabelValues(result).Inc()
	} else {
		metrics.signIns.WithLabelValues(result).Inc()
	}
	if err != nil {
		h.logger.Info("sign-in failed", zap.String("reason", result), zap.Bool("silent", silent), zap.Error(err))
	}
	return err
}

// finishSignIn does the callback's work and names its result for the
// metrics; silent tells a prompt=none attempt from an interactive one.
func (h *Handler) finishSignIn(w http.ResponseWriter, r *http.Request) (silent bool, result string, err error) {
	q := r.URL.Query()
	a, err := h.takeSignInAttempt(w, r, q.Get("state"))
	if err == nil && a.Silent {
		defer func() {
			if err != nil && result != resultBadState && result != resultStoreError {
				http.Redirect(w, r, a.ReturnTo, http.StatusSeeOther)
			}
		}()
	}
	if err != nil {
		if errors.Is(err, errNoSignInAttempt) || errors.Is(err, errSignInAttemptExpired) {
			return false, resultBadState, caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("sign-in callback: %w", err))
		}
		return false, resultStoreError, caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("sign-in callback: %w", err))
	}
	// Authorization server issuer identification: when Pliro names itself in
	// the response, it must be our issuer, or this is a mix-up attack
	// (RFC 9207 §2.4; RFC 9700 §4.4).
	if iss := q.Get("iss"); iss != "" && iss != h.Issuer {
		return a.Silent, resultBadState, caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("sign-in callback: response from issuer %q, expected %q", iss, h.Issuer))
	}
	if code := q.Get("error"); code != "" {
		if a.Silent {
			return true, h.silentSignInRefused(w, r, a, code), nil
		}
		return false, resultProviderRefused, h.signInRefused(code)
	}
	code := q.Get("code")
	if code == "" {
		return a.Silent, resultInvalidRequest, caddyhttp.Error(http.StatusBadRequest, errors.New("sign-in callback without code"))
	}

	e, err := h.provider.get(r.Context())
	if err != nil {
		return a.Silent, resultProviderDown, caddyhttp.Error(http.StatusBadGateway, err)
	}
	tokens, err := h.exchangeCode(r, e, code, a)
	if err != nil {
		return a.Silent, resultExchangeFailed, err
	}
	claims, err := h.verifyIDToken(r.Context(), e, tokens.idToken, a.Nonce, tokens.accessToken)
	if err != nil {
		h.logger.Warn("rejecting ID token", zap.Error(err))
		return a.Silent, resultInvalidIDToken, caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("verifying ID token: %w", err))
	}

	// A brand-new session ID for every sign-in, and the visitor's previous
	// session (if any) ended: a session ID planted before sign-in is worth
	// nothing after it (session fixation, OWASP ASVS V3.2.1).
	if oldKey, ok := h.sessionKeyFromRequest(r); ok {
		if err := h.store.Delete(r.Context(), oldKey); err != nil {
			return a.Silent, resultStoreError, caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("ending previous session: %w", err))
		}
	}
	t := now()
	s := claims.session()
	if h.endProviderSession() {
		// Kept only for id_token_hint at sign-out: it is some 40% of a
		// session's memory.
		s.IDToken = tokens.idToken
	}
	s.AccessToken = tokens.accessToken
	s.Created, s.LastSeen, s.ClaimsAt, s.ReauthAt = t, t, t, t
	cookieValue, key := newSessionID()
	if err := h.store.Save(r.Context(), key, s, h.deadline(s)); err != nil {
		return a.Silent, resultStoreError, caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("saving session: %w", err))
	}
	// Pliro may have ended its session while this sign-in was in flight
	// (backchannel.go): then the new session goes again.
	if result, err := h.endIfLoggedOutMeanwhile(r.Context(), key, s.ProviderSID, claims.AuthTime); err != nil {
		return a.Silent, result, err
	}
	h.setSessionCookie(w, r, cookieValue)
	h.logger.Info("customer signed in", zap.String("customer_id", s.Subject), zap.Bool("silent", a.Silent))
	h.events.emit(eventSignedIn, map[string]any{"customer_id": s.Subject, "sid": s.ProviderSID})
	http.Redirect(w, r, a.ReturnTo, http.StatusSeeOther)
	return a.Silent, resultSuccess, nil
}

// signInRefused turns an error response from Pliro's authorize endpoint
// (OAuth 2.0 §4.1.2.1) into a 4xx error for handle_errors. The error code
// is from a fixed vocabulary; the description is not echoed.
func (h *Handler) signInRefused(code string) error {
	status := http.StatusBadRequest
	if code == "access_denied" {
		status = http.StatusForbidden
	}
	return caddyhttp.Error(status, fmt.Errorf("sign-in refused by the provider: %s", sanitizeErrorCode(code)))
}

// sanitizeErrorCode keeps an OAuth error code fit for logs and error pages
// (RFC 6749 §4.1.2.1 limits it to printable ASCII).
func sanitizeErrorCode(code string) string {
	if len(code) > 64 || strings.ContainsFunc(code, func(r rune) bool { return r < 0x21 || r > 0x7e }) {
		return "invalid"
	}
	return code
}

// tokenResponse is what the token endpoint returned.
type tokenResponse struct {
	idToken     string
	accessToken string
}

// exchangeCode redeems the authorization code at Pliro's token endpoint,
// authenticating with the client secret (OIDC Core §3.1.3.1).
func (h *Handler) exchangeCode(r *http.Request, e *endpoints, code string, a *signInAttempt) (*tokenResponse, error) {
	cfg := h.provider.oauth2Config(e, h.clientSecret, h.redirectURI(r), h.Scopes, h.authStyle())
	var opts []oauth2.AuthCodeOption
	if a.Verifier != "" {
		opts = append(opts, oauth2.VerifierOption(a.Verifier))
	}
	ctx := withEndpoint(oidc.ClientContext(r.Context(), h.provider.client), endpointToken)
	tok, err := cfg.Exchange(ctx, code, opts...)
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.ErrorCode == "invalid_grant" {
			// The code expired or was used already: the customer should
			// simply sign in again.
			return nil, caddyhttp.Error(http.StatusBadRequest, errors.New("exchanging authorization code: code expired or already used"))
		}
		return nil, caddyhttp.Error(http.StatusBadGateway, fmt.Errorf("exchanging authorization code: %w", redactRetrieveError(err)))
	}
	idToken, _ := tok.Extra("id_token").(string)
	if idToken == "" {
		return nil, caddyhttp.Error(http.StatusBadGateway, errors.New("token response has no id_token (is the openid scope granted?)"))
	}
	return &tokenResponse{idToken: idToken, accessToken: tok.AccessToken}, nil
}

// redactRetrieveError keeps the status and OAuth error code of a failed
// token request but drops the response body, which could hold tokens.
func redactRetrieveError(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		status := ""
		if re.Response != nil {
			status = re.Response.Status
		}
		if re.ErrorCode != "" {
			return fmt.Errorf("token endpoint answered %s (%s)", status, re.ErrorCode)
		}
		return fmt.Errorf("token endpoint answered %s", status)
	}
	return err
}

// redirectURI is the registered redirect URI for this request: redirect_uri
// as configured when absolute, else completed with the request's scheme and
// host (Caddy matched the host to this site).
func (h *Handler) redirectURI(r *http.Request) string {
	return h.absoluteURL(r, h.RedirectURI)
}

// absoluteURL completes a configured path with the request's scheme and
// host; an absolute URL is returned as it is.
func (h *Handler) absoluteURL(r *http.Request, pathOrURL string) string {
	if strings.Contains(pathOrURL, "://") {
		return pathOrURL
	}
	return siteURL(r, (&url.URL{Path: pathOrURL}).EscapedPath())
}

// siteURL is the absolute URL of a request URI (path and query) on the
// site the request came to.
func siteURL(r *http.Request, requestURI string) string {
	scheme := "http"
	if isHTTPS(r) {
		scheme = "https"
	}
	return scheme + "://" + r.Host + requestURI
}

// isNavigation reports whether a request is a top-level page load by a
// person, which may be redirected to Pliro. Fetch metadata says so directly
// (Sec-Fetch-Mode: navigate); older browsers send Accept: text/html. XHR,
// fetch, API calls and POSTs get a 401 instead of a redirect they cannot
// follow.
func isNavigation(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if mode := r.Header.Get("Sec-Fetch-Mode"); mode != "" {
		return mode == "navigate"
	}
	if r.Header.Get("X-Requested-With") != "" {
		return false
	}
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

// isTopLevelNavigation is a navigation of the whole tab, not of a frame:
// the only kind of request that may be sent away silently to Pliro and back.
func isTopLevelNavigation(r *http.Request) bool {
	if r.Method != http.MethodGet || !isNavigation(r) {
		return false
	}
	dest := r.Header.Get("Sec-Fetch-Dest")
	return dest == "" || dest == "document"
}

// originalRequestURI is the path and query the browser asked for, before
// any rewrite: the page to come back to after sign-in.
func originalRequestURI(r *http.Request) string {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		return orig.URL.RequestURI()
	}
	return r.URL.RequestURI()
}

func methodNotAllowed(w http.ResponseWriter, allowed ...string) error {
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	return caddyhttp.Error(http.StatusMethodNotAllowed, errors.New("method not allowed"))
}
