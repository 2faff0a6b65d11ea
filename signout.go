package pliro

import (
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// crossOrigin refuses state-changing requests that a browser marks as coming
// from another site (Sec-Fetch-Site, or Origin against Host), so that a
// third-party page cannot sign readers out (CSRF; Fetch Metadata, W3C).
var crossOrigin = http.NewCrossOriginProtection()

// maxSignOutBody bounds the sign-out form (it holds at most return_to).
const maxSignOutBody = 8 << 10

// serveSignOut ends the customer's session.
//
//   - POST ends the session on the server (a copy of the cookie stops working
//     at once) and clears the cookie. Then, when end_provider_session is on
//     (the default) and the customer had a session, the browser continues to
//     Pliro's end_session endpoint so that the Pliro session ends too
//     (RP-Initiated Logout 1.0), and Pliro sends it back to
//     post_logout_redirect_uri. Otherwise the browser goes to the form's
//     return_to (same-origin only) or to sign_out_redirect.
//   - GET and HEAD never sign anyone out (link prefetchers and crawlers
//     follow links): they show a small page with a "Sign out" button that
//     POSTs to the same path, or redirect to sign_out_redirect when nobody
//     is signed in.
func (h *Handler) serveSignOut(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return h.serveSignOutPage(w, r)
	case http.MethodPost:
	default:
		return methodNotAllowed(w, http.MethodGet, http.MethodHead, http.MethodPost)
	}
	if err := crossOrigin.Check(r); err != nil {
		return caddyhttp.Error(http.StatusForbidden, fmt.Errorf("refusing cross-site sign-out: %w", err))
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxSignOutBody)
	if err := r.ParseForm(); err != nil {
		return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("reading sign-out form: %w", err))
	}

	// Sign-out must work even while the session store is down: the cookie
	// goes, and so does Pliro's session (whose back-channel notification
	// ends this one once the store is back); a reader at a shared computer
	// is never left signed in.
	s, key, loadErr := h.loadSession(r)
	if loadErr != nil {
		h.logger.Warn("signing out while the session store is unreachable", zap.Error(loadErr))
	}
	if key != "" {
		if err := h.store.Delete(r.Context(), key); err != nil {
			h.logger.Warn("ending session: the store is unreachable; clearing the cookie anyway", zap.Error(err))
		}
	}
	h.clearSessionCookie(w, r)
	if h.AutoSignIn > 0 {
		// Signed out means signed out: no silent sign-in straight back in
		// while Pliro's session may still be alive.
		setCookie(w, r, cookieName(r, autoSignInCookie), "1", int(time.Duration(h.AutoSignIn).Seconds()))
	}

	target, ok := safeReturnTo(r.PostForm.Get("return_to"))
	if !ok {
		target = h.SignOutRedirect
	}
	if s != nil {
		metrics.signOuts.Inc()
		h.logger.Info("customer signed out", zap.String("customer_id", s.Subject))
		h.events.emit(eventSignedOut, map[string]any{"customer_id": s.Subject, "sid": s.ProviderSID})
	}
	if (s != nil || loadErr != nil) && h.endProviderSession() {
		if u, err := h.endSessionURL(r, s); err == nil {
			target = u
		} else {
			// Pliro is unreachable: the local sign-out stands; the
			// customer lands on the local page.
			h.logger.Warn("skipping sign-out at the provider", zap.Error(err))
		}
	}
	http.Redirect(w, r, target, http.StatusSeeOther)
	return nil
}

// endSessionURL is Pliro's end_session endpoint with the parameters of
// RP-Initiated Logout 1.0 §2: id_token_hint (the latest ID token, so that
// Pliro ends the session without asking; none when the session could not
// be read, and Pliro asks), client_id, and post_logout_redirect_uri (which
// Pliro honours only if registered, §3).
func (h *Handler) endSessionURL(r *http.Request, s *Session) (string, error) {
	e, err := h.provider.get(r.Context())
	if err != nil {
		return "", err
	}
	u, err := url.Parse(e.endSession)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("client_id", h.ClientID)
	if s != nil && s.IDToken != "" {
		q.Set("id_token_hint", s.IDToken)
	}
	q.Set("post_logout_redirect_uri", h.absoluteURL(r, h.PostLogoutRedirectURI))
	u.RawQuery = q.Encode()
	return u.String(), nil
}

var signOutPage = template.Must(template.New("sign-out").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>Sign out</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 28rem; margin: 4rem auto; text-align: center">
<h1>Sign out?</h1>
<p>You are signed in{{with .Name}} as {{.}}{{end}}.</p>
<form method="post" action="{{.Action}}">
{{with .ReturnTo}}<input type="hidden" name="return_to" value="{{.}}">{{end}}
<button type="submit">Sign out</button>
</form>
</body></html>
`))

// serveSignOutPage answers GET on the sign-out path without signing out.
func (h *Handler) serveSignOutPage(w http.ResponseWriter, r *http.Request) error {
	s, _, err := h.loadSession(r)
	if err != nil {
		return caddyhttp.Error(http.StatusServiceUnavailable, err)
	}
	returnTo, _ := safeReturnTo(r.URL.Query().Get("return_to"))
	if s == nil {
		target := returnTo
		if target == "" {
			target = h.SignOutRedirect
		}
		http.Redirect(w, r, target, http.StatusSeeOther)
		return nil
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Robots-Tag", "noindex")
	return signOutPage.Execute(w, map[string]string{"Name": s.Name, "Action": h.SignOutPath, "ReturnTo": returnTo})
}
