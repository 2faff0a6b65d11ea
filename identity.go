package pliro

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// anonymous is the identity of a visitor without a session: every
// placeholder answered, and empty.
var anonymous = &Session{}

// setIdentity tells the rest of the route who the customer is: through
// placeholders, which Caddy's access log (user_id), templates, matchers and
// header_up read, and, when configured, through request headers. For an
// anonymous visitor (st.session == nil) the placeholders are empty, so that
// templates and responses render nothing rather than the placeholder
// itself, and no header is set.
//
// The placeholders are answered from st when they are read, so a later
// change of st.session (pliro_require's refresh) shows in them, and a
// request costs one replacer entry rather than six values in its map.
func (h *Handler) setIdentity(r *http.Request, st *requestState) {
	if repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); repl != nil {
		repl.Map(st.placeholder)
	}
	h.setIdentityHeaders(r, st.session)
}

// placeholder answers {http.auth.user.*} for this request's customer.
func (st *requestState) placeholder(key string) (any, bool) {
	field, ok := strings.CutPrefix(key, identityPlaceholderPrefix)
	if !ok {
		return nil, false
	}
	s := st.session
	if s == nil {
		s = anonymous
	}
	switch field {
	case "id":
		return s.Subject, true
	case "email":
		return s.Email, true
	case "name":
		return s.Name, true
	case "plan":
		return s.Plan, true
	case "plan_slugs":
		return strings.Join(s.PlanSlugs, ","), true
	case "sid":
		return s.ProviderSID, true
	}
	return nil, false
}

// setIdentityHeaders passes a signed-in customer to the upstream in the
// identity headers, when configured.
func (h *Handler) setIdentityHeaders(r *http.Request, s *Session) {
	if p := h.IdentityHeaderPrefix; p != "" && s != nil {
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
