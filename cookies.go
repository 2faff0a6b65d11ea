package pliro

import (
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// isHTTPS reports whether the browser reached the site over HTTPS: directly,
// or through one of the proxies the server trusts (Caddy's trusted_proxies),
// which say so in X-Forwarded-Proto. An untrusted client cannot claim it.
func isHTTPS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	return trusted && strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// cookieName gives a cookie the __Host- prefix on HTTPS: the browser then
// accepts it only with Secure, Path=/ and no Domain, so a sibling subdomain
// cannot plant or overwrite it (RFC 6265bis §4.1.3.2). Plain HTTP (local
// development) cannot use the prefix.
func cookieName(r *http.Request, base string) string {
	if isHTTPS(r) {
		return "__Host-" + base
	}
	return base
}

func (h *Handler) sessionCookieName(r *http.Request) string {
	return cookieName(r, h.CookieName)
}

// setCookie writes a cookie with the attributes every cookie of this module
// carries: HttpOnly (no script access), SameSite=Lax (not sent on cross-site
// subrequests or POSTs, RFC 6265bis §5.4.7), Secure on HTTPS, host-only,
// Path=/. maxAge < 0 deletes the cookie. Responses that set cookies must not
// be cached by shared caches, so they also get Cache-Control: no-store.
func setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name:     name,
		Value:    value,
		Path:     "/",
		MaxAge:   maxAge,
		HttpOnly: true,
		Secure:   isHTTPS(r),
		SameSite: http.SameSiteLaxMode,
	})
	w.Header().Set("Cache-Control", "no-store")
}

func (h *Handler) setSessionCookie(w http.ResponseWriter, r *http.Request, value string) {
	setCookie(w, r, h.sessionCookieName(r), value, int(time.Duration(h.MaxLifetime).Seconds()))
}

func (h *Handler) clearSessionCookie(w http.ResponseWriter, r *http.Request) {
	setCookie(w, r, h.sessionCookieName(r), "", -1)
}
