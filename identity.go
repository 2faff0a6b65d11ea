package pliro

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// anonymous is the identity of a visitor without a session: every
// placeholder set, and empty, so that templates and responses render
// nothing rather than the placeholder itself.
var anonymous = &Session{}

// setIdentity tells the rest of the route who the customer is: through
// placeholders, which Caddy's access log (user_id), templates, matchers and
// header_up read, and, when configured, through request headers. For an
// anonymous visitor (s == anonymous) the placeholders are empty and no
// header is set.
func (h *Handler) setIdentity(r *http.Request, s *Session) {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl != nil {
		repl.Set(identityPlaceholderPrefix+"id", s.Subject)
		repl.Set(identityPlaceholderPrefix+"email", s.Email)
		repl.Set(identityPlaceholderPrefix+"name", s.Name)
		repl.Set(identityPlaceholderPrefix+"plan", s.Plan)
		repl.Set(identityPlaceholderPrefix+"plan_slugs", strings.Join(s.PlanSlugs, ","))
		repl.Set(identityPlaceholderPrefix+"sid", s.ProviderSID)
	}
	if p := h.IdentityHeaderPrefix; p != "" && s != anonymous {
		r.Header[http.CanonicalHeaderKey(p+"Id")] = []string{headerSafe(s.Subject)}
		r.Header[http.CanonicalHeaderKey(p+"Email")] = []string{headerSafe(s.Email)}
		r.Header[http.CanonicalHeaderKey(p+"Name")] = []string{headerSafe(s.Name)}
		r.Header[http.CanonicalHeaderKey(p+"Plan")] = []string{headerSafe(s.Plan)}
		r.Header[http.CanonicalHeaderKey(p+"Plans")] = []string{headerSafe(strings.Join(s.PlanSlugs, ","))}
	}
}

// removeClientIdentityHeaders deletes every request header that the upstream
// could mistake for one of ours: any header whose name starts with the
// prefix, in any case, and also with underscores for dashes, because CGI,
// PHP and some frameworks map X_Pliro_Id and X-Pliro-Id to the same variable.
// Without this, a client could send X-Pliro-Id: cus_victim and be the victim
// as far as the upstream knows (the spoofing attack forward_auth guards
// against too).
//
// The module's own namespace, X-Pliro-, is cleared even when identity
// headers are off or use another prefix: an upstream written to read
// X-Pliro-Id stays safe when identity_headers is later removed or changed.
func (h *Handler) removeClientIdentityHeaders(r *http.Request) {
	for name := range r.Header {
		if hasHeaderPrefix(name, defaultHeaderPrefix) || hasHeaderPrefix(name, h.IdentityHeaderPrefix) {
			delete(r.Header, name)
		}
	}
}

// hasHeaderPrefix reports whether a header name starts with prefix, in any
// case and with "_" for "-"; an empty prefix matches nothing.
func hasHeaderPrefix(name, prefix string) bool {
	return prefix != "" && len(name) >= len(prefix) &&
		strings.EqualFold(strings.ReplaceAll(name[:len(prefix)], "_", "-"), prefix)
}

// headerSafe drops the characters a header value must not hold (RFC 9110
// §5.5): claims come from Pliro, but a name with a line break must not
// break the request to the upstream.
func headerSafe(v string) string {
	return strings.Map(func(r rune) rune {
		if (r < 0x20 && r != '\t') || r == 0x7f {
			return -1
		}
		return r
	}, v)
}
