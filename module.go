// Package pliro is a Caddy HTTP handler that signs a site's customers in with
// Pliro Connect (OpenID Connect) and gates content by their subscription plan.
package pliro

import (
	"crypto"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/oauth2"
)

func init() {
	caddy.RegisterModule(Handler{})
	caddy.RegisterModule(Require{})
}

// Handler signs customers in with Pliro Connect and tells the site who they
// are. It runs on every route of a site, answers its own endpoints (sign-in,
// callback, sign-out, back-channel logout) and, on every other request with
// a valid session, sets these placeholders:
//
//	{http.auth.user.id}          the customer's Pliro ID (sub); Caddy's access log shows it as user_id
//	{http.auth.user.email}       email (scope email)
//	{http.auth.user.name}        name (scope profile)
//	{http.auth.user.plan}        the plan slug (scope profile)
//	{http.auth.user.plan_slugs}  all plan slugs, comma-separated
//	{http.auth.user.sid}         Pliro's session ID
//
// For anonymous visitors they are unset. Routes that need a signed-in
// customer, or a plan, use the pliro_require handler after this one.
//
// Failures are returned as caddyhttp errors, so the site's handle_errors
// decides what customers see: 400 for a broken or replayed sign-in, 401 for
// a non-navigation request that needs a session, 405 for a wrong method on a
// module endpoint, 502 when Pliro fails or sends an invalid token.
type Handler struct {
	// Issuer is the URL of the publication's Pliro site, e.g.
	// https://news.plirotest.page (no trailing slash). Required. Must be
	// https, except on localhost for development. May be given as
	// {env.NAME}.
	Issuer string `json:"issuer,omitempty"`
	// ClientID is the OAuth application's client ID. Required.
	ClientID string `json:"client_id,omitempty"`
	// ClientSecret is the OAuth application's client secret. Required.
	// Give it as {env.NAME} or {file.path}: placeholders are expanded at
	// provision time and never written to the adapted config or the logs.
	ClientSecret string `json:"client_secret,omitempty"`
	// Scopes requested at sign-in. Default: openid email profile. openid is
	// added when missing.
	Scopes []string `json:"scopes,omitempty"`
	// PublicKeyFile is a PEM file with Pliro's public signing key(s). When
	// set, the module uses Pliro's fixed endpoint layout ({issuer}/oauth/...)
	// and does no discovery at all. Default: discovery through
	// {issuer}/.well-known/openid-configuration and its JWKS.
	PublicKeyFile string `json:"public_key_file,omitempty"`
	// PKCE is "auto" (send PKCE S256 where discovery advertises it), "on" or
	// "off". Default: auto (with a pinned key, auto means off).
	PKCE string `json:"pkce,omitempty"`
	// TokenAuthMethod is how the client authenticates at the token endpoint:
	// client_secret_basic (Pliro's documented method) or client_secret_post.
	// Default: client_secret_basic.
	TokenAuthMethod string `json:"token_auth_method,omitempty"`
	// RedirectURI is the redirect URI registered in Pliro: an absolute URL, or
	// a path that is completed with the request's scheme and host.
	// Its path is the callback endpoint. Default: /callback.
	RedirectURI string `json:"redirect_uri,omitempty"`
	// SignInPath starts a sign-in; ?return_to=/path says where to go after.
	// Default: /sign-in.
	SignInPath string `json:"sign_in_path,omitempty"`
	// SignOutPath ends the session (POST). Default: /sign-out.
	SignOutPath string `json:"sign_out_path,omitempty"`
	// BackchannelLogoutPath receives Pliro's sign-out notifications (OpenID
	// Connect Back-Channel Logout 1.0). Default: /backchannel-logout.
	BackchannelLogoutPath string `json:"backchannel_logout_path,omitempty"`
	// CookieName is the session cookie's name; on HTTPS it gets the __Host-
	// prefix. Default: pliro_session.
	CookieName string `json:"cookie_name,omitempty"`
	// IdleTimeout ends a session after this long without a visit.
	// Default: 14d.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`
	// MaxLifetime ends a session this long after sign-in, however active.
	// Default: 90d.
	MaxLifetime caddy.Duration `json:"max_lifetime,omitempty"`
	// ClockSkew is the leeway granted to token times (exp, iat) for clocks
	// that disagree with Pliro's. Default: 1m.
	ClockSkew caddy.Duration `json:"clock_skew,omitempty"`
	// IdentityHeaderPrefix, when set, makes the handler pass the customer to
	// the upstream in request headers: <prefix>Id, <prefix>Email,
	// <prefix>Name, <prefix>Plan and <prefix>Plans. Every request header the
	// client sent with that prefix is removed first. Default: none.
	IdentityHeaderPrefix string `json:"identity_header_prefix,omitempty"`

	// Store is where sessions live. Default: this Caddy's memory, saved to
	// Caddy's storage so that they survive restarts. With redis, every
	// instance that uses the same Redis and key_prefix shares sessions.
	Store *StoreConfig `json:"store,omitempty"`

	// EndProviderSession makes sign-out continue to Pliro's end_session
	// endpoint, so the customer's Pliro session ends too (RP-Initiated
	// Logout 1.0). Default: true, because a reader who clicks "Sign out"
	// expects to be signed out: with Pliro's session alive, the next
	// "Sign in" (or auto sign-in) would let them, or the next person at a
	// shared computer, straight back in without a password.
	EndProviderSession *bool `json:"end_provider_session,omitempty"`
	// PostLogoutRedirectURI is where Pliro sends the browser after its
	// sign-out: an absolute URL or a path on this site, registered in Pliro.
	// Default: /.
	PostLogoutRedirectURI string `json:"post_logout_redirect_uri,omitempty"`
	// SignOutRedirect is the local page shown after sign-out when Pliro's
	// session is not ended (or Pliro is unreachable). Default: /.
	SignOutRedirect string `json:"sign_out_redirect,omitempty"`
	// RefreshInterval is how often the claims of an active session are
	// refreshed from Pliro's userinfo endpoint, so that plan changes made in
	// Pliro take effect. A denied plan check and the return from checkout
	// refresh at once regardless. Negative: off. Default: 15m.
	RefreshInterval caddy.Duration `json:"refresh_interval,omitempty"`
	// ProviderTimeout bounds every other call to Pliro (discovery, JWKS,
	// token exchange, which a customer's sign-in waits for). Default: 10s.
	ProviderTimeout caddy.Duration `json:"provider_timeout,omitempty"`
	// UserinfoTimeout bounds a userinfo call, which a customer's request
	// waits for. Default: 3s.
	UserinfoTimeout caddy.Duration `json:"userinfo_timeout,omitempty"`
	// ReauthInterval makes navigations of signed-in customers check with
	// Pliro (prompt=none) this often that they are still signed in there;
	// when not, the local session ends. Regardless of it, a session whose
	// access token userinfo refuses is re-authenticated silently on the next
	// navigation. Default: 0 (off).
	ReauthInterval caddy.Duration `json:"reauth_interval,omitempty"`
	// AutoSignIn, when positive, signs in anonymous visitors who are already
	// signed in to Pliro: one silent attempt per browser per this period, on
	// a top-level navigation from a browser that sends Fetch Metadata
	// (crawlers are never redirected). Default: 0 (off).
	AutoSignIn caddy.Duration `json:"auto_sign_in,omitempty"`

	// LogoutTokenMaxAge refuses back-channel logout tokens issued longer ago
	// than this. Default: 5m.
	LogoutTokenMaxAge caddy.Duration `json:"logout_token_max_age,omitempty"`

	clientSecret string // ClientSecret with placeholders expanded
	callbackPath string
	provider     *provider
	providerKey  string // key of the provider in providerPool
	store        Store
	keys         sealerSource // gives the sealer of sign-in cookies
	shared       string       // key of the state this config shares with others in sharedPool
	refreshing   *sync.Map    // store keys of sessions whose claims are being refreshed
	storeErrors  *logThrottle // warnings about a failing store on the request path
	events       *events      // the events app, for pliro_* events
	logger       *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.pliro",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Default values, in one place for the docs and the tests.
const (
	defaultRedirectPath       = "/callback"
	defaultSignInPath         = "/sign-in"
	defaultSignOutPath        = "/sign-out"
	defaultBackchannelPath    = "/backchannel-logout"
	defaultCookieName         = "pliro_session"
	defaultIdleTimeout        = 14 * 24 * time.Hour
	defaultMaxLifetime        = 90 * 24 * time.Hour
	defaultClockSkew          = time.Minute
	defaultLogoutTokenMaxAge  = 5 * time.Minute
	defaultRefreshInterval    = 15 * time.Minute
	defaultUserinfoTimeout    = 3 * time.Second
	defaultProviderTimeout    = 10 * time.Second
	defaultPKCE               = "auto"
	defaultTokenAuthMethod    = "client_secret_basic"
	clientSecretPostMethod    = "client_secret_post"
	defaultScopeList          = "openid email profile"
	identityPlaceholderPrefix = "http.auth.user."
)

// Provision fills the defaults, expands the secret and sets up the state
// this config shares with earlier configs (sessions survive reloads). It does
// no network I/O: Pliro is contacted on first use.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.setDefaults()
	h.refreshing = new(sync.Map)
	h.storeErrors = newLogThrottle(storeWarningInterval)
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	if configStorage(ctx) != nil { // a bare context (unit tests) has no apps
		eventsApp, err := ctx.App("events")
		if err != nil {
			return fmt.Errorf("getting events app: %w", err)
		}
		h.events = &events{ctx: ctx, app: eventsApp.(*caddyevents.App)}
	}

	repl := caddy.NewReplacer()
	issuer, err := repl.ReplaceOrErr(h.Issuer, true, true)
	if err != nil {
		return fmt.Errorf("expanding issuer: %w", err)
	}
	h.Issuer = strings.TrimRight(issuer, "/")
	secret, err := repl.ReplaceOrErr(h.ClientSecret, true, true)
	if err != nil {
		return fmt.Errorf("expanding client_secret: %w", err)
	}
	h.clientSecret = strings.TrimSpace(secret)
	if h.ClientID, err = repl.ReplaceOrErr(h.ClientID, true, true); err != nil {
		return fmt.Errorf("expanding client_id: %w", err)
	}

	u, err := url.Parse(h.RedirectURI)
	if err != nil {
		return fmt.Errorf("parsing redirect_uri: %w", err)
	}
	h.callbackPath = u.Path

	var pinned []crypto.PublicKey
	var pemBytes []byte
	if h.PublicKeyFile != "" {
		pemBytes, err = os.ReadFile(h.PublicKeyFile)
		if err != nil {
			return fmt.Errorf("reading public_key_file: %w", err)
		}
		keys, err := parsePublicKeys(pemBytes)
		if err != nil {
			return fmt.Errorf("public_key_file %s: %w", h.PublicKeyFile, err)
		}
		for _, k := range keys {
			pinned = append(pinned, k)
		}
	}
	// The provider is pooled like the sessions, so that a reload keeps what
	// it has learned from Pliro (see providerPool).
	h.provider, h.providerKey, err = loadProvider(&provider{
		issuer:     h.Issuer,
		clientID:   h.ClientID,
		pkce:       h.PKCE,
		clockSkew:  time.Duration(h.ClockSkew),
		pinnedKeys: pinned,
		timeout:    time.Duration(h.ProviderTimeout),
	}, pemBytes)
	if err != nil {
		return fmt.Errorf("setting up the sign-in provider: %w", err)
	}

	state, err := h.loadSharedState(ctx)
	if err != nil {
		return err
	}
	h.store, h.keys = state.store, state.keys
	return nil
}

func (h *Handler) setDefaults() {
	h.Issuer = strings.TrimRight(h.Issuer, "/")
	if len(h.Scopes) == 0 {
		h.Scopes = strings.Fields(defaultScopeList)
	}
	if !slices.Contains(h.Scopes, "openid") {
		h.Scopes = append([]string{"openid"}, h.Scopes...)
	}
	setDefault(&h.PKCE, defaultPKCE)
	setDefault(&h.TokenAuthMethod, defaultTokenAuthMethod)
	setDefault(&h.RedirectURI, defaultRedirectPath)
	setDefault(&h.SignInPath, defaultSignInPath)
	setDefault(&h.SignOutPath, defaultSignOutPath)
	setDefault(&h.BackchannelLogoutPath, defaultBackchannelPath)
	setDefault(&h.CookieName, defaultCookieName)
	setDefault(&h.IdleTimeout, caddy.Duration(defaultIdleTimeout))
	setDefault(&h.MaxLifetime, caddy.Duration(defaultMaxLifetime))
	setDefault(&h.ClockSkew, caddy.Duration(defaultClockSkew))
	setDefault(&h.RefreshInterval, caddy.Duration(defaultRefreshInterval))
	setDefault(&h.ProviderTimeout, caddy.Duration(defaultProviderTimeout))
	setDefault(&h.UserinfoTimeout, caddy.Duration(defaultUserinfoTimeout))
	setDefault(&h.LogoutTokenMaxAge, caddy.Duration(defaultLogoutTokenMaxAge))
	setDefault(&h.PostLogoutRedirectURI, "/")
	setDefault(&h.SignOutRedirect, "/")
}

// Validate checks the provisioned config; it does no I/O.
func (h *Handler) Validate() error {
	if err := validateIssuer(h.Issuer); err != nil {
		return err
	}
	if h.ClientID == "" {
		return errors.New("client_id is required: the client ID of the OAuth application in Pliro (Settings > OAuth applications)")
	}
	if h.clientSecret == "" {
		return errors.New("client_secret is required: give it as {env.PLIRO_CLIENT_SECRET} or {file./path/to/secret}")
	}
	switch h.PKCE {
	case "auto", "on", "off":
	default:
		return fmt.Errorf("pkce must be auto, on or off, not %q", h.PKCE)
	}
	switch h.TokenAuthMethod {
	case defaultTokenAuthMethod, clientSecretPostMethod:
	default:
		return fmt.Errorf("token_auth_method must be %s or %s, not %q", defaultTokenAuthMethod, clientSecretPostMethod, h.TokenAuthMethod)
	}
	if err := validateRedirectURI(h.RedirectURI); err != nil {
		return err
	}
	paths := map[string]string{
		"redirect_uri":            h.callbackPath,
		"sign_in_path":            h.SignInPath,
		"sign_out_path":           h.SignOutPath,
		"backchannel_logout_path": h.BackchannelLogoutPath,
	}
	seen := map[string]string{}
	for name, p := range paths {
		if !strings.HasPrefix(p, "/") {
			return fmt.Errorf("%s must be a path starting with /, not %q", name, p)
		}
		if other, dup := seen[p]; dup {
			return fmt.Errorf("%s and %s are both %s: each endpoint needs its own path", name, other, p)
		}
		seen[p] = name
	}
	if h.IdleTimeout <= 0 || h.MaxLifetime <= 0 || h.LogoutTokenMaxAge <= 0 || h.UserinfoTimeout <= 0 || h.ProviderTimeout <= 0 {
		return errors.New("idle_timeout, max_lifetime, logout_token_max_age, userinfo_timeout and provider_timeout must be positive")
	}
	if h.ClockSkew < 0 || h.ReauthInterval < 0 || h.AutoSignIn < 0 {
		return errors.New("clock_skew, reauth_interval and auto_sign_in must not be negative")
	}
	if h.ReauthInterval > 0 && time.Duration(h.ReauthInterval) < minReauthGap {
		return fmt.Errorf("reauth_interval must be at least %s (or 0 for off)", minReauthGap)
	}
	if _, ok := safeReturnTo(h.SignOutRedirect); !ok {
		return fmt.Errorf("sign_out_redirect must be a path on this site, such as /, not %q", h.SignOutRedirect)
	}
	if err := validateRedirectURI(h.PostLogoutRedirectURI); err != nil {
		return fmt.Errorf("post_logout_redirect_uri: %w", err)
	}
	if p := h.IdentityHeaderPrefix; p != "" && (strings.Contains(p, "_") || !isToken(p)) {
		return fmt.Errorf("identity_header_prefix %q must be a header name prefix such as X-Pliro-", p)
	}
	if h.IdleTimeout > h.MaxLifetime {
		return fmt.Errorf("idle_timeout (%s) must not exceed max_lifetime (%s)", time.Duration(h.IdleTimeout), time.Duration(h.MaxLifetime))
	}
	if h.ClockSkew > caddy.Duration(5*time.Minute) {
		return errors.New("clock_skew above 5m would accept long-expired tokens; fix the clock instead")
	}
	if !isToken(h.CookieName) {
		return fmt.Errorf("cookie_name %q is not a valid cookie name", h.CookieName)
	}
	return nil
}

// validateIssuer insists on https: tokens and the client secret travel to
// the issuer (RFC 9700 §2.6; OIDC Core §3.1.2.1 requires TLS). Plain http is
// allowed only for a provider on this machine, for development.
func validateIssuer(issuer string) error {
	if issuer == "" {
		return errors.New("issuer is required: the URL of your Pliro site, e.g. https://news.plirotest.page")
	}
	u, err := url.Parse(issuer)
	if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("issuer %q must be an absolute URL such as https://news.plirotest.page", issuer)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopbackHost(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("issuer %q must use https (plain http is allowed only for localhost)", issuer)
	default:
		return fmt.Errorf("issuer %q must use https", issuer)
	}
}

func validateRedirectURI(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("redirect_uri: %w", err)
	}
	if u.Fragment != "" {
		return errors.New("redirect_uri must not contain a fragment (OAuth 2.0 §3.1.2)")
	}
	if u.IsAbs() && u.Scheme != "https" && !(u.Scheme == "http" && isLoopbackHost(u.Hostname())) {
		return fmt.Errorf("redirect_uri %q must use https (plain http only on localhost)", raw)
	}
	if !u.IsAbs() && u.Host != "" {
		return fmt.Errorf("redirect_uri %q must be an absolute URL or a path", raw)
	}
	return nil
}

func isLoopbackHost(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// isToken reports whether s is an HTTP token (RFC 9110 §5.6.2): what a
// header name is, and what a cookie name must be (RFC 6265 §4.1.1).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune(`()<>@,;:\"/[]?={}`, c) {
			return false
		}
	}
	return true
}

// Cleanup releases this config's hold on the shared state and the
// provider; the last config to let go stops the session store's sweeper.
// After a partial provision it releases what was taken.
func (h *Handler) Cleanup() error {
	var errs []error
	if h.providerKey != "" {
		_, err := providerPool.Delete(h.providerKey)
		errs = append(errs, err)
		h.providerKey = ""
	}
	if h.shared != "" {
		_, err := sharedPool.Delete(h.shared)
		errs = append(errs, err)
		h.shared = ""
	}
	return errors.Join(errs...)
}

func (h *Handler) clockSkew() time.Duration { return time.Duration(h.ClockSkew) }

func (h *Handler) endProviderSession() bool {
	return h.EndProviderSession == nil || *h.EndProviderSession
}

// authStyle maps token_auth_method to the oauth2 package's client
// authentication (RFC 6749 §2.3.1).
func (h *Handler) authStyle() oauth2.AuthStyle {
	if h.TokenAuthMethod == clientSecretPostMethod {
		return oauth2.AuthStyleInParams
	}
	return oauth2.AuthStyleInHeader
}

// setDefault sets *field to value when it holds its zero value (not
// configured).
func setDefault[T comparable](field *T, value T) {
	var zero T
	if *field == zero {
		*field = value
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
