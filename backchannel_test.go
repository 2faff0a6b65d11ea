package pliro

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Back-channel logout tests (OpenID Connect Back-Channel Logout 1.0). Pliro
// POSTs a logout token to /backchannel-logout; every forged, stale or
// replayed token must be answered 400 and must leave the reader signed in,
// because a logout endpoint that can be tricked lets anybody on the internet
// sign any reader out, again and again.

// startSignedIn runs the module (with extra subdirectives) against a test
// provider and signs one reader in.
func startSignedIn(t *testing.T, extra string) (*testProvider, *testSite, *browser) {
	t.Helper()
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, extra))
	b := newBrowser(t)
	signIn(t, site, b, "/members/x")
	return p, site, b
}

// membersPage asks for a members-only page as a script would, so that an
// anonymous visitor gets 401 rather than a trip to the provider.
func membersPage(t *testing.T, site *testSite, b *browser) *response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, site.base+"/members/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Sec-Fetch-Mode", "cors")
	return b.do(req)
}

// requireSessionAlive checks that b still gets the members page.
func requireSessionAlive(t *testing.T, site *testSite, b *browser) {
	t.Helper()
	if resp := membersPage(t, site, b); resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.body, "members: id="+testSubject) {
		t.Fatalf("session ended: members page answered %d %q", resp.StatusCode, resp.body)
	}
}

// requireSessionEnded checks that b no longer gets the members page.
func requireSessionEnded(t *testing.T, site *testSite, b *browser) {
	t.Helper()
	if resp := membersPage(t, site, b); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("session still works: members page answered %d %q", resp.StatusCode, resp.body)
	}
}

// postBackchannel POSTs body to the back-channel logout endpoint from a
// client without cookies, as Pliro's server does.
func postBackchannel(t *testing.T, site *testSite, contentType, body string) *response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, site.base+"/backchannel-logout", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	return newBrowser(t).do(req)
}

// postLogoutToken sends a logout token as Pliro does.
func postLogoutToken(t *testing.T, site *testSite, token string) *response {
	t.Helper()
	return postBackchannel(t, site, "application/x-www-form-urlencoded", url.Values{"logout_token": {token}}.Encode())
}

// requireLogoutAccepted checks the answer to a valid notification.
func requireLogoutAccepted(t *testing.T, resp *response) {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d %q, want 200", resp.StatusCode, resp.body)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store (Back-Channel Logout 1.0 §2.8)", cc)
	}
}

// requireLogoutRefused checks for status with a JSON error body whose
// description mentions why, so that each test fails for its own reason.
func requireLogoutRefused(t *testing.T, resp *response, status int, why string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d %q, want %d", resp.StatusCode, resp.body, status)
	}
	var body struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.Unmarshal([]byte(resp.body), &body); err != nil || body.Error == "" {
		t.Fatalf("body %q is not a JSON error (%v)", resp.body, err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if !strings.Contains(body.Description, why) {
		t.Errorf("refused for %q, want a reason mentioning %q", body.Description, why)
	}
}

// requireForgeryRefused signs a reader in, sends the token that forge makes
// and checks that it is refused (400, mentioning why) and that the reader is
// still signed in.
func requireForgeryRefused(t *testing.T, forge func(p *testProvider) string, why string) {
	t.Helper()
	p, site, b := startSignedIn(t, "")
	requireLogoutRefused(t, postLogoutToken(t, site, forge(p)), http.StatusBadRequest, why)
	requireSessionAlive(t, site, b)
}

// mutated is a forge that changes an otherwise valid logout token before
// Pliro's key signs it.
func mutated(mutate func(header, claims map[string]any)) func(p *testProvider) string {
	return func(p *testProvider) string { return p.logoutToken(mutate) }
}

// signedBy is a forge that makes a valid logout token's header and claims
// and signs them with sign instead of Pliro's key.
func signedBy(sign func(p *testProvider, header, claims map[string]any) string) func(p *testProvider) string {
	return func(p *testProvider) string {
		var h, c map[string]any
		p.logoutToken(func(header, claims map[string]any) { h, c = header, claims })
		return sign(p, h, c)
	}
}

// --- Forged signatures ---

// An attacker signs a logout token with a key of their own, naming Pliro's
// key ID, to sign a reader out.
func TestBackchannelLogoutRefusesBadSignature(t *testing.T) {
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	requireForgeryRefused(t, signedBy(func(_ *testProvider, h, c map[string]any) string {
		return signES256With(other, h, c)
	}), "verifying logout token signature")
}

// An attacker sends an unsigned token (alg none), hoping the endpoint
// trusts whatever the header says.
func TestBackchannelLogoutRefusesAlgNone(t *testing.T) {
	requireForgeryRefused(t, signedBy(func(_ *testProvider, h, c map[string]any) string {
		return signNone(h, c)
	}), "unexpected signature algorithm")
}

// Somebody who knows the client secret (a leaked config, a former developer)
// "signs" a logout token with it by HMAC.
func TestBackchannelLogoutRefusesHS256WithClientSecret(t *testing.T) {
	requireForgeryRefused(t, signedBy(func(_ *testProvider, h, c map[string]any) string {
		return signHS256([]byte(testClientSecret), h, c)
	}), "unexpected signature algorithm")
}

// Algorithm confusion: the attacker uses Pliro's PUBLIC key (anybody can
// download it) as an HMAC secret; a verifier that lets the header pick the
// algorithm would check the HMAC with the same bytes and accept it.
func TestBackchannelLogoutRefusesHS256WithPublicKey(t *testing.T) {
	requireForgeryRefused(t, signedBy(func(p *testProvider, h, c map[string]any) string {
		p.mu.Lock()
		der, err := x509.MarshalPKIXPublicKey(&p.key.PublicKey)
		p.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		return signHS256(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), h, c)
	}), "unexpected signature algorithm")
}

// A token naming a key ID Pliro never published is refused (and costs at
// most one rate-limited JWKS refetch, see the flood test).
func TestBackchannelLogoutRefusesUnknownKid(t *testing.T) {
	requireForgeryRefused(t, mutated(func(h, _ map[string]any) { h["kid"] = "no-such-key" }), `kid "no-such-key"`)
}

// --- Token type confusion ---

// Without typ, a token of another kind signed by Pliro could pass as a
// logout token; Pliro marks logout tokens typ logout+jwt.
func TestBackchannelLogoutRefusesMissingTyp(t *testing.T) {
	requireForgeryRefused(t, mutated(func(h, _ map[string]any) { delete(h, "typ") }), "typ")
}

// An attacker who got hold of a reader's ID token (typ JWT, signed by
// Pliro, right iss and aud) presents it as a logout token.
func TestBackchannelLogoutRefusesIDTokenAsLogoutToken(t *testing.T) {
	// A token with every logout claim right but typ JWT is refused for its
	// typ alone...
	requireForgeryRefused(t, mutated(func(h, _ map[string]any) { h["typ"] = "JWT" }), "typ")
	// ...and so is a real ID token.
	requireForgeryRefused(t, func(p *testProvider) string { return p.idToken("n-0S6_WzA2Mj") }, "typ")
}

// --- Claims ---

// A logout token Pliro issued for another site (another issuer) is replayed
// here.
func TestBackchannelLogoutRefusesWrongIssuer(t *testing.T) {
	requireForgeryRefused(t, mutated(func(_, c map[string]any) { c["iss"] = "https://other.plirotest.page" }), "issuer")
}

// A logout token issued to another OAuth application of the same Pliro site
// (one the attacker controls, or another publication) is replayed here.
func TestBackchannelLogoutRefusesWrongAudience(t *testing.T) {
	requireForgeryRefused(t, mutated(func(_, c map[string]any) { c["aud"] = "another-client" }), "aud")
	// One aud string is one audience: a client whose ID merely contains ours
	// after a space is another client (RFC 7519 §4.1.3).
	requireForgeryRefused(t, mutated(func(_, c map[string]any) { c["aud"] = "another-client " + testClientID }), "aud")
}

// A token without iat cannot be told from an old one.
func TestBackchannelLogoutRefusesMissingIat(t *testing.T) {
	requireForgeryRefused(t, mutated(func(_, c map[string]any) { delete(c, "iat") }), "no iat")
}

// A token dated in the future (beyond the clock skew) would stay "fresh"
// for longer than the max age allows.
func TestBackchannelLogoutRefusesIatInFuture(t *testing.T) {
	requireForgeryRefused(t, mutated(func(_, c map[string]any) {
		c["iat"] = time.Now().Add(5 * time.Minute).Unix()
		c["exp"] = time.Now().Add(7 * time.Minute).Unix()
	}), "future")
}

// An old logout token (from a log, a proxy, a backup) is replayed after the
// replay cache could have forgotten it: tokens older than
// logout_token_max_age (default 5m) are refused.
func TestBackchannelLogoutRefusesTokenOlderThanMaxAge(t *testing.T) {
	requireForgeryRefused(t, mutated(func(_, c map[string]any) {
		c["iat"] = time.Now().Add(-10 * time.Minute).Unix()
	}), "older than 5m0s")
}

// logout_token_max_age is honoured: a 3-minute-old token, fine by default, is
// refused with a 1m limit (plus the 1m clock skew).
func TestBackchannelLogoutMaxAgeIsConfigurable(t *testing.T) {
	p, site, b := startSignedIn(t, "logout_token_max_age 1m")
	token := p.logoutToken(func(_, c map[string]any) { delete(c, "exp") })
	shiftClock(t, 3*time.Minute)
	requireLogoutRefused(t, postLogoutToken(t, site, token), http.StatusBadRequest, "older than 1m0s")
	requireSessionAlive(t, site, b)
}

// An expired logout token is replayed.
func TestBackchannelLogoutRefusesExpiredToken(t *testing.T) {
	requireForgeryRefused(t, mutated(func(_, c map[string]any) {
		c["iat"] = time.Now().Add(-4 * time.Minute).Unix()
		c["exp"] = time.Now().Add(-2 * time.Minute).Unix()
	}), "expired")
}

// A JWT that Pliro signed for another purpose has no back-channel logout
// event.
func TestBackchannelLogoutRefusesMissingEvents(t *testing.T) {
	requireForgeryRefused(t, mutated(func(_, c map[string]any) { delete(c, "events") }), "event")
}

// A Security Event Token of another kind (another event URI) is not a
// logout.
func TestBackchannelLogoutRefusesWrongEvent(t *testing.T) {
	requireForgeryRefused(t, mutated(func(_, c map[string]any) {
		c["events"] = map[string]any{"http://schemas.openid.net/event/other": map[string]any{}}
	}), "event")
}

// A nonce marks an ID token; a logout token must not carry one, so an ID
// token can never pass as a logout token (§2.4).
func TestBackchannelLogoutRefusesNonce(t *testing.T) {
	requireForgeryRefused(t, mutated(func(_, c map[string]any) { c["nonce"] = "n-0S6_WzA2Mj" }), "nonce")
}

// A token that names nobody must not be read as "everybody".
func TestBackchannelLogoutRefusesNeitherSubNorSid(t *testing.T) {
	requireForgeryRefused(t, mutated(func(_, c map[string]any) {
		delete(c, "sub")
		delete(c, "sid")
	}), "neither sub nor sid")
}

// --- Replays ---

// An attacker who captured a logout token (a log line, a proxy) sends it
// again after the reader signed back in, to sign them out once more.
func TestBackchannelLogoutRefusesReplayedJTI(t *testing.T) {
	p, site, b := startSignedIn(t, "")
	token := p.logoutToken(nil)
	requireLogoutAccepted(t, postLogoutToken(t, site, token))
	requireSessionEnded(t, site, b)

	p.endSession()
	signIn(t, site, b, "/members/x")
	requireLogoutRefused(t, postLogoutToken(t, site, token), http.StatusBadRequest, "replayed")
	requireSessionAlive(t, site, b)
}

// The same replay with a token that carries no jti (Pliro does not document
// one): it is accepted once, and its replay is refused.
func TestBackchannelLogoutRefusesReplayWithoutJTI(t *testing.T) {
	p, site, b := startSignedIn(t, "")
	token := p.logoutToken(func(_, c map[string]any) { delete(c, "jti") })
	requireLogoutAccepted(t, postLogoutToken(t, site, token))
	requireSessionEnded(t, site, b)

	p.endSession()
	signIn(t, site, b, "/members/x")
	requireLogoutRefused(t, postLogoutToken(t, site, token), http.StatusBadRequest, "replayed")
	requireSessionAlive(t, site, b)
}

// The replay of a jti-less token in other bytes: the attacker cannot sign,
// but can re-encode Pliro's signature so that it still verifies. A replay
// cache keyed by the token's bytes would take each variant for a new token.
func TestBackchannelLogoutRefusesReplayInOtherBytes(t *testing.T) {
	p, site, b := startSignedIn(t, "")
	token := p.logoutToken(func(_, c map[string]any) { delete(c, "jti") })
	requireLogoutAccepted(t, postLogoutToken(t, site, token))
	p.endSession()

	head, sig := token[:strings.LastIndexByte(token, '.')+1], token[strings.LastIndexByte(token, '.')+1:]
	variants := map[string]string{
		// ECDSA signatures are malleable: (r, n-s) verifies as (r, s) does.
		"high-s signature": head + highS(t, sig),
		// The last base64 character of a 64-byte signature has 4 unused bits.
		"unused base64 bits": head + sig[:len(sig)-1] + flipUnusedBits(t, sig[len(sig)-1]),
		// Go's base64 decoder skips line breaks.
		"line break": head + sig[:10] + "\n" + sig[10:],
		// The JWS JSON serialization of the same token.
		"JSON serialization": jwsJSON(token),
	}
	for name, variant := range variants {
		t.Run(name, func(t *testing.T) {
			signIn(t, site, b, "/members/x")
			resp := postLogoutToken(t, site, variant)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("replay accepted: status %d %q", resp.StatusCode, resp.body)
			}
			requireSessionAlive(t, site, b)
		})
	}
}

// highS returns the other valid ES256 signature for the same message:
// (r, s) -> (r, n-s).
func highS(t *testing.T, sig string) string {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || len(raw) != 64 {
		t.Fatalf("not an ES256 signature: %v", err)
	}
	s := new(big.Int).SetBytes(raw[32:])
	s.Sub(elliptic.P256().Params().N, s)
	out := append([]byte(nil), raw[:32]...)
	out = append(out, s.FillBytes(make([]byte, 32))...)
	return base64.RawURLEncoding.EncodeToString(out)
}

// flipUnusedBits changes the last character of a base64url signature of 64
// bytes without changing the bytes it decodes to.
func flipUnusedBits(t *testing.T, c byte) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, c)
	if i < 0 {
		t.Fatalf("%q is not base64url", c)
	}
	return string(alphabet[i^1])
}

// jwsJSON re-encodes a compact JWS in the flattened JSON serialization.
func jwsJSON(compact string) string {
	parts := strings.Split(compact, ".")
	b, _ := json.Marshal(map[string]string{"protected": parts[0], "payload": parts[1], "signature": parts[2]})
	return string(b)
}

// --- Accepted notifications ---

// signInAs signs a new browser in while the provider issues sid.
func signInAs(t *testing.T, p *testProvider, site *testSite, sid string) *browser {
	t.Helper()
	p.set(func(p *testProvider) { p.customer["sid"] = sid })
	b := newBrowser(t)
	signIn(t, site, b, "/members/x")
	return b
}

// Pliro ends one of the reader's Pliro sessions: only the site sessions
// started from it end; the reader's other device stays signed in.
func TestBackchannelLogoutBySIDEndsThatSession(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	laptop := signInAs(t, p, site, "sid_laptop")
	phone := signInAs(t, p, site, "sid_phone")

	requireLogoutAccepted(t, postLogoutToken(t, site, p.logoutToken(func(_, c map[string]any) {
		delete(c, "sub")
		c["sid"] = "sid_laptop"
	})))
	requireSessionEnded(t, site, laptop)
	requireSessionAlive(t, site, phone)
}

// With only sub, Pliro signs the customer out everywhere: every session of
// the customer ends.
func TestBackchannelLogoutBySubEndsAllSessions(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	laptop := signInAs(t, p, site, "sid_laptop")
	phone := signInAs(t, p, site, "sid_phone")

	requireLogoutAccepted(t, postLogoutToken(t, site, p.logoutToken(func(_, c map[string]any) { delete(c, "sid") })))
	requireSessionEnded(t, site, laptop)
	requireSessionEnded(t, site, phone)
}

// With both, the session that carries the sid ends, and only if it is that
// customer's: a sid paired with another customer ends nothing.
func TestBackchannelLogoutBySIDAndSub(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, ""))
	laptop := signInAs(t, p, site, "sid_laptop")
	phone := signInAs(t, p, site, "sid_phone")

	requireLogoutAccepted(t, postLogoutToken(t, site, p.logoutToken(func(_, c map[string]any) {
		c["sid"] = "sid_laptop"
		c["sub"] = "cus_somebody_else"
	})))
	requireSessionAlive(t, site, laptop)

	requireLogoutAccepted(t, postLogoutToken(t, site, p.logoutToken(func(_, c map[string]any) { c["sid"] = "sid_laptop" })))
	requireSessionEnded(t, site, laptop)
	requireSessionAlive(t, site, phone)
}

// exp is optional in Back-Channel Logout 1.0; Pliro does not document it.
func TestBackchannelLogoutAcceptsTokenWithoutExp(t *testing.T) {
	p, site, b := startSignedIn(t, "")
	requireLogoutAccepted(t, postLogoutToken(t, site, p.logoutToken(func(_, c map[string]any) { delete(c, "exp") })))
	requireSessionEnded(t, site, b)
}

// The typ media type is case-insensitive and may carry "application/"
// (RFC 7515 §4.1.9).
func TestBackchannelLogoutAcceptsFullTypMediaType(t *testing.T) {
	p, site, b := startSignedIn(t, "")
	requireLogoutAccepted(t, postLogoutToken(t, site, p.logoutToken(func(h, _ map[string]any) { h["typ"] = "Application/Logout+JWT" })))
	requireSessionEnded(t, site, b)
}

// A notification for a customer or session this site does not know (signed
// in elsewhere, or already signed out) is still a success.
func TestBackchannelLogoutForUnknownSessionIs200(t *testing.T) {
	p, site, b := startSignedIn(t, "")
	requireLogoutAccepted(t, postLogoutToken(t, site, p.logoutToken(func(_, c map[string]any) {
		c["sub"] = "cus_unknown"
		c["sid"] = "sid_unknown"
	})))
	requireLogoutAccepted(t, postLogoutToken(t, site, p.logoutToken(func(_, c map[string]any) {
		c["sub"] = "cus_unknown"
		delete(c, "sid")
	})))
	requireSessionAlive(t, site, b)
}

// --- The request itself ---

// The endpoint takes only POST; a link or prefetch cannot reach it.
func TestBackchannelLogoutRefusesOtherMethods(t *testing.T) {
	p, site, b := startSignedIn(t, "")
	token := p.logoutToken(nil)
	for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		req, _ := http.NewRequest(method, site.base+"/backchannel-logout?logout_token="+url.QueryEscape(token), strings.NewReader(url.Values{"logout_token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp := newBrowser(t).do(req)
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != http.MethodPost {
			t.Errorf("%s: status %d, Allow %q", method, resp.StatusCode, resp.Header.Get("Allow"))
		}
	}
	requireSessionAlive(t, site, b)
}

// Only a form body counts; a JSON or multipart body with a valid token is
// refused, so that no other parser decides what the token is.
func TestBackchannelLogoutRefusesWrongContentType(t *testing.T) {
	p, site, b := startSignedIn(t, "")
	token := p.logoutToken(nil)
	form := url.Values{"logout_token": {token}}.Encode()
	for _, c := range []struct{ contentType, body string }{
		{"application/json", `{"logout_token":"` + token + `"}`},
		{"text/plain", form},
		{"multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"logout_token\"\r\n\r\n" + token + "\r\n--x--\r\n"},
		{"", form},
	} {
		requireLogoutRefused(t, postBackchannel(t, site, c.contentType, c.body), http.StatusBadRequest, "content type")
	}
	requireSessionAlive(t, site, b)
}

// A huge body (a valid token buried in megabytes) is refused unread and
// ends nothing.
func TestBackchannelLogoutRefusesOversizedBody(t *testing.T) {
	p, site, b := startSignedIn(t, "")
	body := url.Values{"logout_token": {p.logoutToken(nil)}, "pad": {strings.Repeat("x", 64<<10)}}.Encode()
	requireLogoutRefused(t, postBackchannel(t, site, "application/x-www-form-urlencoded", body), http.StatusRequestEntityTooLarge, "too large")
	requireSessionAlive(t, site, b)
}

// Without logout_token in the body there is nothing to do; a token in the
// URL (where logs keep it) does not count.
func TestBackchannelLogoutRefusesMissingToken(t *testing.T) {
	p, site, b := startSignedIn(t, "")
	requireLogoutRefused(t, postBackchannel(t, site, "application/x-www-form-urlencoded", ""), http.StatusBadRequest, "no logout_token")

	req, _ := http.NewRequest(http.MethodPost, site.base+"/backchannel-logout?logout_token="+url.QueryEscape(p.logoutToken(nil)), nil)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	requireLogoutRefused(t, newBrowser(t).do(req), http.StatusBadRequest, "no logout_token")
	requireSessionAlive(t, site, b)
}

// --- Keys ---

// shiftClock moves the package clock d ahead of the real one until the test
// ends.
func shiftClock(t *testing.T, d time.Duration) {
	t.Helper()
	orig := now
	now = func() time.Time { return time.Now().Add(d) }
	t.Cleanup(func() { now = orig })
}

// A flood of tokens with made-up key IDs must not make Caddy hammer Pliro's
// JWKS (each unknown kid could otherwise trigger a fetch: a cheap way to get
// the site rate-limited or blocked by Pliro). Key rotation must still work:
// once the refetch interval has passed, a token signed with Pliro's new key
// is accepted.
func TestBackchannelLogoutUnknownKidFloodDoesNotHammerJWKS(t *testing.T) {
	p, site, b := startSignedIn(t, "")
	if got := p.jwksFetches.Load(); got != 1 {
		t.Fatalf("%d JWKS fetches after sign-in, want 1", got)
	}
	flood := func(n int) {
		t.Helper()
		tokens := make(chan string, n)
		for range n {
			tokens <- p.logoutToken(func(h, _ map[string]any) { h["kid"] = randomToken(8) })
		}
		close(tokens)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for token := range tokens {
					resp, err := http.PostForm(site.base+"/backchannel-logout", url.Values{"logout_token": {token}})
					if err != nil {
						t.Error(err)
						return
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusBadRequest {
						t.Errorf("token with unknown kid: status %d", resp.StatusCode)
					}
				}
			})
		}
		wg.Wait()
	}

	flood(200)
	if got := p.jwksFetches.Load(); got > 2 {
		t.Errorf("200 unknown kids caused %d JWKS fetches, want at most 2", got)
	}
	requireSessionAlive(t, site, b)

	// Pliro rotates its key. After the refetch interval, the first token
	// with the new kid makes one fetch and is accepted.
	p.rotateKey()
	shiftClock(t, jwksMinRefetch+time.Second)
	before := p.jwksFetches.Load()
	requireLogoutAccepted(t, postLogoutToken(t, site, p.logoutToken(nil)))
	requireSessionEnded(t, site, b)
	if got := p.jwksFetches.Load(); got != before+1 {
		t.Errorf("%d JWKS fetches for the rotated key, want 1", got-before)
	}

	// A new flood right after costs nothing more.
	flood(50)
	if got := p.jwksFetches.Load(); got != before+1 {
		t.Errorf("second flood caused %d more JWKS fetches", got-before-1)
	}
}

// With Pliro's key pinned (public_key_file, no discovery), logout tokens are
// verified with that key: a genuine one ends the session, one signed by
// another key does not.
func TestBackchannelLogoutWithPinnedKey(t *testing.T) {
	p := newTestProvider(t)
	site := startCaddy(t, siteFor(p, "public_key_file "+p.publicKeyPEM(t)))
	b := newBrowser(t)
	signIn(t, site, b, "/members/x")

	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forged := signedBy(func(_ *testProvider, h, c map[string]any) string { return signES256With(other, h, c) })(p)
	requireLogoutRefused(t, postLogoutToken(t, site, forged), http.StatusBadRequest, "verifying logout token signature")
	requireSessionAlive(t, site, b)

	requireLogoutAccepted(t, postLogoutToken(t, site, p.logoutToken(nil)))
	requireSessionEnded(t, site, b)
	if d, j := p.discoveryFetches.Load(), p.jwksFetches.Load(); d != 0 || j != 0 {
		t.Errorf("pinned mode fetched discovery %d and JWKS %d times, want 0", d, j)
	}
}
