package pliro

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// Pliro's fixed endpoint layout, used when a public key is pinned and no
// discovery happens (shared/pliro-connect.md, "Hosts and endpoints").
const (
	authorizePath  = "/oauth/authorize"
	tokenPath      = "/oauth/token"
	userinfoPath   = "/oauth/userinfo"
	endSessionPath = "/oauth/end_session"
)

// endpoints is what the module knows about Pliro once it has learned it:
// by discovery, or from the fixed layout and a pinned key.
type endpoints struct {
	authorize  string
	token      string
	userinfo   string
	endSession string
	pkce       bool   // send PKCE S256 (RFC 7636)
	jwksURL    string // where keys come from; empty with a pinned key
	keys       oidc.KeySet
	idTokens   *oidc.IDTokenVerifier
}

// provider learns Pliro's endpoints and keys lazily: Provision must do no
// network I/O (it also runs for `caddy validate`), and Caddy must start and
// serve public pages while Pliro is unreachable. A failed discovery is
// retried with exponential backoff (1s up to 1m) on later requests.
type provider struct {
	issuer     string
	clientID   string
	pkce       string // auto, on, off
	clockSkew  time.Duration
	timeout    time.Duration      // of each call
	pinnedKeys []crypto.PublicKey // no discovery when set
	client     *http.Client

	ready atomic.Pointer[endpoints]

	mu       sync.Mutex // one discovery at a time
	failures int
	retryAt  time.Time
	lastErr  error

	// Rediscovery after a reload (rediscover): at most one at a time, and
	// none once the provider is destructed, which cancels and waits for it.
	bgMu          sync.Mutex
	rediscovering bool
	destructed    bool
	bgCtx         context.Context
	bgCancel      context.CancelFunc
	bgDone        sync.WaitGroup
}

// maxDiscoveryGap is the longest wait between discovery attempts.
const maxDiscoveryGap = time.Minute

// providerPool keeps what a provider has learned (endpoints, the JWKS and
// its refetch limiter, the discovery backoff) across config reloads: without
// it every `caddy reload` would make the next protected request wait for
// discovery and JWKS again, and would reset the limiter that keeps a flood
// of forged tokens from hammering Pliro. Entries are keyed by every setting
// a provider is made of (providerPoolKey), so a reload that changes one of
// them gets a fresh provider and one that does not keeps the warm one.
var providerPool = caddy.NewUsagePool()

// providerPoolKey identifies a provider by all of its settings. The pinned
// key counts by the file's contents, not its path: a key replaced in the
// same file must not be outlived by the old one. The client needs no part
// of its own, it is made from the timeout.
func providerPoolKey(p *provider, pinnedPEM []byte) string {
	pem := sha256.Sum256(pinnedPEM)
	sum := sha256.Sum256(fmt.Appendf(nil, "%q %q %q %d %d %x",
		p.issuer, p.clientID, p.pkce, p.clockSkew, p.timeout, pem))
	return hex.EncodeToString(sum[:])
}

// loadProvider returns the pooled provider with cfg's settings, making it
// (with its client) when no config holds one, and the pool key the caller
// releases in Cleanup. cfg carries the settings only. Like Provision, it
// does no network I/O.
func loadProvider(cfg *provider, pinnedPEM []byte) (*provider, string, error) {
	key := providerPoolKey(cfg, pinnedPEM)
	val, loaded, err := providerPool.LoadOrNew(key, func() (caddy.Destructor, error) {
		cfg.client = newProviderClient(cfg.timeout)
		cfg.bgCtx, cfg.bgCancel = context.WithCancel(context.Background())
		return cfg, nil
	})
	if err != nil {
		return nil, "", err
	}
	p := val.(*provider)
	if loaded {
		p.retryNow()
		p.rediscover()
	}
	return p, key, nil
}

// rediscover fetches the discovery document again in the background, for a
// pooled provider that learned its endpoints before a reload: the operator
// may reload because Pliro's document changed (a new endpoint or jwks_uri,
// S256 newly advertised), which would otherwise take a restart. No request
// waits for it: requests keep the endpoints they have until it stores new
// ones, and when it fails (Pliro down) the old ones stay, as they still
// work. One runs at a time, however many reloads come, and none outlives
// the provider. A pinned key means no discovery, and there is nothing to
// redo for a provider that has not learned its endpoints yet.
func (p *provider) rediscover() {
	if len(p.pinnedKeys) > 0 || p.ready.Load() == nil {
		return
	}
	p.bgMu.Lock()
	defer p.bgMu.Unlock()
	if p.rediscovering || p.destructed || p.bgCtx == nil {
		return
	}
	p.rediscovering = true
	p.bgDone.Add(1)
	go func() {
		defer p.bgDone.Done()
		defer func() {
			p.bgMu.Lock()
			p.rediscovering = false
			p.bgMu.Unlock()
		}()
		e, err := p.learn(p.bgCtx)
		if err != nil || p.bgCtx.Err() != nil {
			return
		}
		old := p.ready.Load()
		if old == nil || sameEndpoints(old, e) {
			return
		}
		if e.jwksURL == old.jwksURL {
			// The same JWKS: keep its cache and its refetch limiter.
			e.keys, e.idTokens = old.keys, old.idTokens
		}
		p.ready.Store(e)
	}()
}

// sameEndpoints tells whether a and b send customers, codes and tokens to
// the same places, the same way, and verify with keys from the same place.
func sameEndpoints(a, b *endpoints) bool {
	return a.authorize == b.authorize && a.token == b.token && a.userinfo == b.userinfo &&
		a.endSession == b.endSession && a.pkce == b.pkce && a.jwksURL == b.jwksURL
}

// retryNow lifts the discovery backoff of a provider that has not reached
// Pliro yet. An operator who reloads has often just fixed what kept Pliro
// out of reach (the issuer's DNS, a firewall, Pliro itself), and should not
// wait up to maxDiscoveryGap for the next attempt; reloads are operator
// actions, so this opens no way to hammer Pliro.
func (p *provider) retryNow() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failures, p.retryAt = 0, time.Time{}
}

// Destruct runs when the last config using the provider is gone: it ends a
// rediscovery in progress and closes the idle connections to Pliro, which
// nothing else would.
func (p *provider) Destruct() error {
	p.bgMu.Lock()
	p.destructed = true
	p.bgMu.Unlock()
	if p.bgCancel != nil {
		p.bgCancel()
	}
	p.bgDone.Wait()
	if t, ok := p.client.Transport.(timedTransport); ok {
		if c, ok := t.next.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
	return nil
}

// newProviderClient makes the one client for every call to Pliro. Each call
// ends after timeout (provider_timeout), so a slow Pliro cannot hold
// customers' requests, or pile up goroutines, for long.
func newProviderClient(timeout time.Duration) *http.Client {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 16
	transport.ResponseHeaderTimeout = timeout
	return &http.Client{
		Timeout:   timeout,
		Transport: timedTransport{next: transport},
		// Pliro's endpoints answer directly; a redirect is unexpected and
		// must not carry the code, verifier or client secret elsewhere
		// (RFC 9700 §4.12).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// get returns Pliro's endpoints, discovering them on first use.
func (p *provider) get(ctx context.Context) (*endpoints, error) {
	if e := p.ready.Load(); e != nil {
		return e, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e := p.ready.Load(); e != nil {
		return e, nil
	}
	if now().Before(p.retryAt) {
		return nil, p.lastErr
	}
	// Shared result: one visitor hanging up must not fail it for everyone.
	e, err := p.learn(context.WithoutCancel(ctx))
	if err != nil {
		p.failures++
		p.retryAt = now().Add(min(time.Second<<min(p.failures-1, 6), maxDiscoveryGap))
		p.lastErr = fmt.Errorf("reaching the sign-in provider %s: %w", p.issuer, err)
		return nil, p.lastErr
	}
	p.ready.Store(e)
	return e, nil
}

// learn discovers the endpoints (or lays them out, with a pinned key),
// within p.timeout; ctx ends it sooner.
func (p *provider) learn(ctx context.Context) (*endpoints, error) {
	if len(p.pinnedKeys) > 0 {
		return p.withKeys(&endpoints{
			authorize:  p.issuer + authorizePath,
			token:      p.issuer + tokenPath,
			userinfo:   p.issuer + userinfoPath,
			endSession: p.issuer + endSessionPath,
			pkce:       p.pkce == "on",
		}, &oidc.StaticKeySet{PublicKeys: p.pinnedKeys}), nil
	}
	ctx, cancel := context.WithTimeout(withEndpoint(ctx, endpointDiscovery), p.timeout)
	defer cancel()
	// go-oidc fetches the discovery document and checks that its issuer is
	// exactly ours (OIDC Discovery 1.0 §4.3), which stops a mix-up with
	// another provider's document.
	discovered, err := oidc.NewProvider(oidc.ClientContext(ctx, p.client), p.issuer)
	if err != nil {
		return nil, err
	}
	var extra struct {
		JWKSURI       string   `json:"jwks_uri"`
		EndSession    string   `json:"end_session_endpoint"`
		PKCEMethods   []string `json:"code_challenge_methods_supported"`
		UserinfoURL   string   `json:"userinfo_endpoint"`
		TokenEndpoint string   `json:"token_endpoint"`
	}
	if err := discovered.Claims(&extra); err != nil {
		return nil, err
	}
	if extra.JWKSURI == "" || extra.TokenEndpoint == "" {
		return nil, fmt.Errorf("discovery document lacks jwks_uri or token_endpoint")
	}
	e := &endpoints{
		authorize:  discovered.Endpoint().AuthURL,
		token:      extra.TokenEndpoint,
		userinfo:   extra.UserinfoURL,
		endSession: extra.EndSession,
		jwksURL:    extra.JWKSURI,
		// Pliro's PKCE support is unknown: send it where the provider
		// advertises S256 (RFC 9700 §2.1.1 recommends PKCE), or when the
		// operator says so.
		pkce: p.pkce == "on" || (p.pkce == "auto" && slices.Contains(extra.PKCEMethods, "S256")),
	}
	if e.userinfo == "" {
		e.userinfo = p.issuer + userinfoPath
	}
	if e.endSession == "" {
		e.endSession = p.issuer + endSessionPath
	}
	return p.withKeys(e, &remoteKeys{url: extra.JWKSURI, client: p.client}), nil
}

// withKeys completes e with the key set and the ID token verifier.
func (p *provider) withKeys(e *endpoints, keys oidc.KeySet) *endpoints {
	e.keys = keys
	// The verifier checks the signature (with only ES256/RS256 allowed), iss
	// equal to our issuer, aud containing our client ID and exp not passed
	// (OIDC Core §3.1.3.7 steps 2, 3, 6, 9). Clock skew is granted by
	// running its clock behind.
	e.idTokens = oidc.NewVerifier(p.issuer, keys, &oidc.Config{
		ClientID:             p.clientID,
		SupportedSigningAlgs: signingAlgNames,
		Now:                  func() time.Time { return now().Add(-p.clockSkew) },
	})
	return e
}

// oauth2Config is the authorization-code client for one redirect URI.
func (p *provider) oauth2Config(e *endpoints, clientSecret, redirectURI string, scopes []string, authStyle oauth2.AuthStyle) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     p.clientID,
		ClientSecret: clientSecret,
		RedirectURL:  redirectURI,
		Scopes:       scopes,
		Endpoint: oauth2.Endpoint{
			AuthURL:   e.authorize,
			TokenURL:  e.token,
			AuthStyle: authStyle,
		},
	}
}
