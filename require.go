package pliro

import (
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Require guards a route: only a signed-in customer passes, and, when Plans
// are given, only one whose plan is among them. It works with the pliro
// handler, which must run earlier on the same site (the directive order
// takes care of that).
//
// An anonymous visitor who navigates to the route is sent to sign in and
// comes back; any other anonymous request (XHR, fetch, API, POST) gets 401.
// A signed-in customer without the plan gets 403, with these placeholders
// for the site's handle_errors page:
//
//	{http.auth.user.*}             who the customer is (see the pliro handler)
//	{http.auth.required_plans}     the plans the route asks for, comma-separated
//
// While the session store is unreachable the route answers 503 with
// Retry-After.
type Require struct {
	// Plans lets in customers whose plan (the plan claim, or any of
	// plan_slugs) is one of these slugs. Empty: any signed-in customer.
	Plans []string `json:"plans,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Require) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.pliro_require",
		New: func() caddy.Module { return new(Require) },
	}
}

var errNoPliroHandler = errors.New("pliro_require found no pliro handler on this route: add a pliro block to the site")

func (rq *Require) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	st := requestStateOf(r)
	if st == nil {
		return caddyhttp.Error(http.StatusInternalServerError, errNoPliroHandler)
	}
	if st.session == nil {
		if st.storeErr != nil {
			w.Header().Set("Retry-After", "5")
			return caddyhttp.Error(http.StatusServiceUnavailable, st.storeErr)
		}
		if isNavigation(r) {
			return st.handler.startSignIn(w, r, originalRequestURI(r))
		}
		return caddyhttp.Error(http.StatusUnauthorized, errors.New("sign-in required"))
	}
	if len(rq.Plans) > 0 && !hasPlan(st.session, rq.Plans) {
		if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			repl.Set("http.auth.required_plans", strings.Join(rq.Plans, ","))
		}
		return caddyhttp.Error(http.StatusForbidden, errors.New("customer's plan does not give access to this page"))
	}
	return next.ServeHTTP(w, r)
}

// hasPlan reports whether the customer's plan or plan slugs include any of
// the wanted slugs.
func hasPlan(s *Session, wanted []string) bool {
	for _, p := range wanted {
		if s.Plan == p || slices.Contains(s.PlanSlugs, p) {
			return true
		}
	}
	return false
}

// Interface guards
var _ caddyhttp.MiddlewareHandler = (*Require)(nil)
