package pliro

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Require guards a route: only a signed-in customer passes, and, when rules
// are given, only one whose claims satisfy them. It works with the pliro
// handler, which must run earlier on the same site (the directive order
// takes care of that).
//
// An anonymous visitor who navigates to the route is sent to sign in and
// comes back; any other anonymous request (XHR, fetch, API, POST) gets 401.
//
// A signed-in customer who fails a rule is first re-checked with Pliro's
// userinfo (at most every 30s per session), so a plan bought a minute ago
// counts. If still denied, the route answers 403 with these placeholders
// for the site's handle_errors paywall page:
//
//	{http.auth.user.*}              who the customer is (see the pliro handler)
//	{http.pliro.required_plans}     the plans the route asks for, comma-separated
//	{http.pliro.continue_url}       this page, absolute, marked so that coming
//	                                back to it refreshes the claims
//	{http.pliro.subscribe_url}      subscribe_url with that continue_url: the
//	                                link for the paywall's "Subscribe" button
//
// With RedirectToSubscribe, a denied navigation goes straight to
// {http.pliro.subscribe_url} instead.
//
// While the session store is unreachable the route answers 503 with
// Retry-After.
type Require struct {
	// Plans lets in customers whose plan (the plan claim, or any of
	// plan_slugs) is one of these slugs. Empty: any signed-in customer.
	Plans []string `json:"plans,omitempty"`
	// Claims lets in customers whose claims have, for every name given, one
	// of the listed values (string claims, string lists, or numbers and
	// booleans written as in JSON, e.g. "true").
	Claims map[string][]string `json:"claims,omitempty"`
	// SubscribeURL is a Pliro offer or subscribe page, e.g.
	// https://news.plirotest.page/offers/premium/subscribe; continue_url is
	// added to it. Default: none.
	SubscribeURL string `json:"subscribe_url,omitempty"`
	// RedirectToSubscribe sends denied navigations to SubscribeURL rather
	// than answering 403. Default: false.
	RedirectToSubscribe bool `json:"redirect_to_subscribe,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Require) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.pliro_require",
		New: func() caddy.Module { return new(Require) },
	}
}

var errNoPliroHandler = errors.New("pliro_require found no pliro handler on this route: add a pliro block to the site")

// Provision expands placeholders in subscribe_url ({env.PLIRO_ISSUER}).
func (rq *Require) Provision(caddy.Context) error {
	u, err := caddy.NewReplacer().ReplaceOrErr(rq.SubscribeURL, true, true)
	if err != nil {
		return fmt.Errorf("expanding subscribe_url: %w", err)
	}
	rq.SubscribeURL = u
	return nil
}

// Validate checks the rules.
func (rq *Require) Validate() error {
	if rq.SubscribeURL != "" {
		u, err := url.Parse(rq.SubscribeURL)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return fmt.Errorf("subscribe_url %q must be an absolute URL of a Pliro page", rq.SubscribeURL)
		}
	} else if rq.RedirectToSubscribe {
		return errors.New("redirect_to_subscribe needs subscribe_url")
	}
	for name, values := range rq.Claims {
		if len(values) == 0 {
			return fmt.Errorf("claim %q needs at least one value", name)
		}
		if protocolClaims[name] && !sessionClaims[name] {
			return fmt.Errorf("claim %q is about the token, not the customer, and is not kept: use sub, sid, email, name, plan, plan_slugs or a custom claim", name)
		}
	}
	return nil
}

func (rq *Require) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	st := requestStateOf(r)
	if st == nil {
		return caddyhttp.Error(http.StatusInternalServerError, errNoPliroHandler)
	}
	h, s := st.handler, st.session
	if s == nil {
		if st.storeErr != nil {
			w.Header().Set("Retry-After", "5")
			return caddyhttp.Error(http.StatusServiceUnavailable, st.storeErr)
		}
		if isNavigation(r) {
			return h.startSignIn(w, r, originalRequestURI(r), false)
		}
		return caddyhttp.Error(http.StatusUnauthorized, errors.New("sign-in required"))
	}
	if rq.allows(s) {
		return next.ServeHTTP(w, r)
	}

	// Denied on what the module knew: ask Pliro before saying no, so that
	// a customer who just bought the plan gets in on this very request.
	fresh, err := h.refreshClaims(r.Context(), st.key, s, false)
	if err != nil {
		h.logger.Debug("refreshing denied customer", zap.Error(err))
	}
	if fresh != s {
		st.session = fresh // the placeholders follow
		h.setIdentityHeaders(r, fresh)
		if rq.allows(fresh) {
			return next.ServeHTTP(w, r)
		}
	}
	// The access token has expired: fresh claims come from a silent
	// re-authentication, which returns to this page.
	if fresh.NeedsReauth && isTopLevelNavigation(r) && h.startSilentReauth(w, r, st.key, fresh, originalRequestURI(r)) {
		return nil
	}
	return rq.deny(w, r)
}

// allows applies the rules to a signed-in customer.
func (rq *Require) allows(s *Session) bool {
	if len(rq.Plans) > 0 && !hasPlan(s, rq.Plans) {
		return false
	}
	for name, wanted := range rq.Claims {
		if !slices.ContainsFunc(s.claimValues(name), func(v string) bool { return slices.Contains(wanted, v) }) {
			return false
		}
	}
	return true
}

// deny answers 403 with the placeholders a paywall page needs, or sends a
// navigation to the subscribe page.
func (rq *Require) deny(w http.ResponseWriter, r *http.Request) error {
	back := continueURL(r)
	subscribe := ""
	if rq.SubscribeURL != "" {
		u, _ := url.Parse(rq.SubscribeURL) // checked in Validate
		q := u.Query()
		q.Set("continue_url", back)
		u.RawQuery = q.Encode()
		subscribe = u.String()
	}
	if rq.RedirectToSubscribe && isTopLevelNavigation(r) {
		http.Redirect(w, r, subscribe, http.StatusSeeOther)
		return nil
	}
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.pliro.required_plans", strings.Join(rq.Plans, ","))
		repl.Set("http.pliro.continue_url", back)
		repl.Set("http.pliro.subscribe_url", subscribe)
	}
	return caddyhttp.Error(http.StatusForbidden, errors.New("the customer's plan does not give access to this page"))
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
var (
	_ caddy.Provisioner           = (*Require)(nil)
	_ caddy.Validator             = (*Require)(nil)
	_ caddyhttp.MiddlewareHandler = (*Require)(nil)
)
