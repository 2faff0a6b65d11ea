package pliro

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// testProvider is a small OpenID Provider laid out like Pliro (the /oauth/...
// routes, ES256, the Pliro claims), written for these tests so that it can
// also misbehave on demand. The end-to-end tests use a real provider
// (testenv/pliro); this one makes the hostile cases easy to state.
type testProvider struct {
	t      *testing.T
	srv    *httptest.Server
	issuer string

	clientID, clientSecret string

	mu            sync.Mutex
	key           *ecdsa.PrivateKey
	kid           string
	publishedKeys []jose.JSONWebKey // what the JWKS serves
	codes         map[string]codeGrant
	customer      map[string]any // claims of the customer who signs in
	advertisePKCE bool
	signedIn      bool // the customer has a session at the provider (prompt=none)
	lastAuthorize url.Values
	lastToken     url.Values
	accessTokens  map[string]string // access token -> sub

	// mutateIDToken, when set, changes an ID token's header and claims
	// before signing (misbehaviour); sign replaces the signing step.
	mutateIDToken func(header, claims map[string]any)
	sign          func(header, claims map[string]any) string
	// tokenEndpoint, when set, answers the token request instead.
	tokenEndpoint http.HandlerFunc

	userinfoCalls    atomic.Int32
	userinfoDelay    time.Duration
	jwksFetches      atomic.Int32
	discoveryFetches atomic.Int32
	down             atomic.Bool // every endpoint answers 503
}

type codeGrant struct {
	nonce, challenge, redirectURI string
	sid                           string    // the provider session the code belongs to
	authTime                      time.Time // when the customer authenticated
}

const (
	testClientID     = "news-test"
	testClientSecret = "s3cret-never-in-logs"
	testSubject      = "cus_1BxEm4QKh4Rb5v6Qvu2THx"
	testProviderSID  = "sid_7f3a9c"
)

func newTestProvider(t *testing.T) *testProvider {
	t.Helper()
	p := &testProvider{
		t:             t,
		clientID:      testClientID,
		clientSecret:  testClientSecret,
		codes:         map[string]codeGrant{},
		accessTokens:  map[string]string{},
		advertisePKCE: true,
		signedIn:      true,
		customer: map[string]any{
			"sub":        testSubject,
			"sid":        testProviderSID,
			"email":      "reader@example.com",
			"name":       "Rita Reader",
			"plan":       "premium",
			"plan_slugs": []string{"premium"},
		},
	}
	p.rotateKey()
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", p.serveDiscovery)
	mux.HandleFunc("/oauth/discovery/keys", p.serveJWKS)
	mux.HandleFunc("/oauth/authorize", p.serveAuthorize)
	mux.HandleFunc("/oauth/token", p.serveToken)
	mux.HandleFunc("/oauth/userinfo", p.serveUserinfo)
	mux.HandleFunc("/oauth/end_session", p.serveEndSession)
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	p.issuer = p.srv.URL
	return p
}

// rotateKey makes a new signing key and publishes only it.
func (p *testProvider) rotateKey() {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.key = key
	p.kid = fmt.Sprintf("key-%d", time.Now().UnixNano())
	p.publishedKeys = []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: p.kid, Algorithm: "ES256", Use: "sig"}}
}

// publicKeyPEM writes the current public key as a PEM file (pinned mode).
func (p *testProvider) publicKeyPEM(t *testing.T) string {
	return writePEMFile(t, &p.key.PublicKey)
}

// writePEMFile writes a public key as a PEM file and returns its path.
func writePEMFile(t *testing.T, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pliro.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (p *testProvider) serveDiscovery(w http.ResponseWriter, r *http.Request) {
	p.discoveryFetches.Add(1)
	doc := map[string]any{
		"issuer":                                p.issuer,
		"authorization_endpoint":                p.issuer + "/oauth/authorize",
		"token_endpoint":                        p.issuer + "/oauth/token",
		"userinfo_endpoint":                     p.issuer + "/oauth/userinfo",
		"end_session_endpoint":                  p.issuer + "/oauth/end_session",
		"jwks_uri":                              p.issuer + "/oauth/discovery/keys",
		"id_token_signing_alg_values_supported": []string{"ES256"},
		"response_types_supported":              []string{"code"},
		"subject_types_supported":               []string{"public"},
	}
	p.mu.Lock()
	if p.advertisePKCE {
		doc["code_challenge_methods_supported"] = []string{"S256"}
	}
	p.mu.Unlock()
	writeJSON(w, doc)
}

func (p *testProvider) serveJWKS(w http.ResponseWriter, r *http.Request) {
	p.jwksFetches.Add(1)
	p.mu.Lock()
	keys := p.publishedKeys
	p.mu.Unlock()
	writeJSON(w, jose.JSONWebKeySet{Keys: keys})
}

// serveAuthorize approves at once, as Pliro does for a customer who is
// already signed in there.
func (p *testProvider) serveAuthorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	p.mu.Lock()
	p.lastAuthorize = q
	signedIn := p.signedIn
	p.mu.Unlock()
	redirect, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || q.Get("client_id") != p.clientID || q.Get("response_type") != "code" {
		http.Error(w, "bad authorization request", http.StatusBadRequest)
		return
	}
	back := redirect.Query()
	back.Set("state", q.Get("state"))
	if q.Get("prompt") == "none" && !signedIn {
		back.Set("error", "login_required")
	} else {
		code := randomToken(16)
		p.mu.Lock()
		sid, _ := p.customer["sid"].(string)
		p.codes[code] = codeGrant{nonce: q.Get("nonce"), challenge: q.Get("code_challenge"), redirectURI: q.Get("redirect_uri"), sid: sid, authTime: time.Now()}
		p.mu.Unlock()
		back.Set("code", code)
	}
	redirect.RawQuery = back.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

func (p *testProvider) serveToken(w http.ResponseWriter, r *http.Request) {
	if p.tokenEndpoint != nil {
		p.tokenEndpoint(w, r)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	p.lastToken = r.PostForm
	p.mu.Unlock()
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	} else {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
	}
	if id != p.clientID || secret != p.clientSecret {
		writeJSONStatus(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client"})
		return
	}
	p.mu.Lock()
	grant, ok := p.codes[r.PostForm.Get("code")]
	delete(p.codes, r.PostForm.Get("code"))
	p.mu.Unlock()
	if !ok || grant.redirectURI != r.PostForm.Get("redirect_uri") || r.PostForm.Get("grant_type") != "authorization_code" {
		writeJSONStatus(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant"})
		return
	}
	if grant.challenge != "" {
		sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
		if base64.RawURLEncoding.EncodeToString(sum[:]) != grant.challenge {
			writeJSONStatus(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": "PKCE"})
			return
		}
	}
	access := randomToken(24)
	p.mu.Lock()
	p.accessTokens[access] = p.customer["sub"].(string)
	p.mu.Unlock()
	writeJSON(w, map[string]any{
		"access_token": access,
		"token_type":   "Bearer",
		"expires_in":   7200,
		"id_token":     p.idTokenForSession(grant.nonce, grant.sid, grant.authTime),
	})
}

// idToken mints an ID token for the current customer.
func (p *testProvider) idToken(nonce string) string {
	return p.idTokenForSession(nonce, "", time.Now())
}

// idTokenForSession mints an ID token for the current customer in the
// provider session sid (when not empty: the one its code was issued in),
// who authenticated at authTime.
func (p *testProvider) idTokenForSession(nonce, sid string, authTime time.Time) string {
	t := time.Now()
	claims := map[string]any{
		"iss":       p.issuer,
		"aud":       p.clientID,
		"iat":       t.Unix(),
		"exp":       t.Add(2 * time.Minute).Unix(),
		"auth_time": authTime.Unix(),
	}
	if nonce != "" {
		claims["nonce"] = nonce
	}
	p.mu.Lock()
	for k, v := range p.customer {
		claims[k] = v
	}
	if sid != "" {
		claims["sid"] = sid
	}
	header := map[string]any{"alg": "ES256", "typ": "JWT", "kid": p.kid}
	mutate, sign := p.mutateIDToken, p.sign
	p.mu.Unlock()
	if mutate != nil {
		mutate(header, claims)
	}
	if sign != nil {
		return sign(header, claims)
	}
	return p.signES256(header, claims)
}

// signES256 signs with the provider's current key.
func (p *testProvider) signES256(header, claims map[string]any) string {
	p.mu.Lock()
	key := p.key
	p.mu.Unlock()
	return signES256With(key, header, claims)
}

func signES256With(key *ecdsa.PrivateKey, header, claims map[string]any) string {
	input := encodeSegment(header) + "." + encodeSegment(claims)
	sum := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		panic(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// signHS256 forges a token "signed" with a shared secret (alg confusion).
func signHS256(secret []byte, header, claims map[string]any) string {
	header["alg"] = "HS256"
	input := encodeSegment(header) + "." + encodeSegment(claims)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(input))
	return input + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// signNone forges an unsigned token.
func signNone(header, claims map[string]any) string {
	header["alg"] = "none"
	return encodeSegment(header) + "." + encodeSegment(claims) + "."
}

func encodeSegment(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func (p *testProvider) serveUserinfo(w http.ResponseWriter, r *http.Request) {
	p.userinfoCalls.Add(1)
	p.mu.Lock()
	delay := p.userinfoDelay
	p.mu.Unlock()
	select {
	case <-time.After(delay):
	case <-r.Context().Done():
		return
	}
	const prefix = "Bearer "
	auth := r.Header.Get("Authorization")
	p.mu.Lock()
	sub, ok := p.accessTokens[auth[min(len(prefix), len(auth)):]]
	claims := map[string]any{}
	for k, v := range p.customer {
		if k != "sid" {
			claims[k] = v
		}
	}
	p.mu.Unlock()
	if len(auth) <= len(prefix) || !ok {
		w.Header().Set("WWW-Authenticate", `Bearer realm="Pliro", error="invalid_token", error_description="The access token is invalid"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	claims["sub"] = sub
	writeJSON(w, claims)
}

func (p *testProvider) serveEndSession(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.signedIn = false
	p.mu.Unlock()
	if target := r.URL.Query().Get("post_logout_redirect_uri"); target != "" {
		http.Redirect(w, r, target, http.StatusFound)
		return
	}
	fmt.Fprintln(w, "signed out")
}

// forgetAccessTokens makes userinfo refuse every access token issued so far,
// as Pliro does once they expire.
func (p *testProvider) forgetAccessTokens() {
	p.set(func(p *testProvider) { p.accessTokens = map[string]string{} })
}

// logoutToken mints a back-channel logout token with the given changes.
func (p *testProvider) logoutToken(mutate func(header, claims map[string]any)) string {
	t := time.Now()
	claims := map[string]any{
		"iss":    p.issuer,
		"aud":    p.clientID,
		"iat":    t.Unix(),
		"exp":    t.Add(2 * time.Minute).Unix(),
		"jti":    randomToken(12),
		"sub":    testSubject,
		"sid":    testProviderSID,
		"events": map[string]any{backchannelLogoutEvent: map[string]any{}},
	}
	p.mu.Lock()
	header := map[string]any{"alg": "ES256", "typ": "logout+jwt", "kid": p.kid}
	if sid, _ := p.customer["sid"].(string); sid != "" {
		claims["sid"] = sid
	}
	p.mu.Unlock()
	if mutate != nil {
		mutate(header, claims)
	}
	return p.signES256(header, claims)
}

// endSession is what Pliro does after its back-channel logout: the
// customer's Pliro session is over, and the next sign-in starts a new one
// with a new sid (the site refuses sign-ins for an ended sid).
func (p *testProvider) endSession() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.customer["sid"] = "sid_" + randomToken(6)
}

func (p *testProvider) set(f func(p *testProvider)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

func writeJSON(w http.ResponseWriter, v any) { writeJSONStatus(w, http.StatusOK, v) }

func writeJSONStatus(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
