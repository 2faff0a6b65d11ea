package pliro

import (
	"context"
	"crypto"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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
	pkce       bool // send PKCE S256 (RFC 7636)
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
}

// maxDiscoveryGap is the longest wait between discovery attempts.
const maxDiscoveryGap = time.Minute

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
	e, err := p.learn(ctx)
	if err != nil {
		p.failures++
		p.retryAt = now().Add(min(time.Second<<min(p.failures-1, 6), maxDiscoveryGap))
		p.lastErr = fmt.Errorf("reaching the sign-in provider %s: %w", p.issuer, err)
		return nil, p.lastErr
	}
	p.ready.Store(e)
	return e, nil
}

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
	// Shared result: one visitor hanging up must not fail it for everyone.
	ctx, cancel := context.WithTimeout(withEndpoint(context.WithoutCancel(ctx), endpointDiscovery), p.timeout)
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
