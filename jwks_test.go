package pliro

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Key material for the unit tests. RSA keys are slow to make, so each size
// is made once per test binary.
var (
	unitRSA2048 = sync.OnceValue(func() *rsa.PrivateKey { return mustRSAKey(2048) })
	unitRSA1024 = sync.OnceValue(func() *rsa.PrivateKey { return mustRSAKey(1024) })
)

func mustRSAKey(bits int) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(err)
	}
	return k
}

func unitECKey(t testing.TB, curve elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// publicKeyPEMBytes encodes a public key as a PEM "PUBLIC KEY" block, as
// Pliro publishes it.
func publicKeyPEMBytes(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// privateKeyPEMBytes encodes a private key as PKCS #8 ("PRIVATE KEY").
func privateKeyPEMBytes(t testing.TB, priv any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// certificatePEMBytes makes a self-signed certificate for key.
func certificatePEMBytes(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "news.plirotest.page"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func writeUnitFile(t testing.TB, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// unitClock replaces the package clock for one test; it moves only when told.
type unitClock struct {
	mu sync.Mutex
	t  time.Time
}

func useUnitClock(t testing.TB) *unitClock {
	c := &unitClock{t: time.Unix(1_760_000_000, 0)}
	old := now
	now = c.now
	t.Cleanup(func() { now = old })
	return c
}

func (c *unitClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *unitClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// unitSignJWT signs claims as a compact JWS with alg; kid "" leaves it out.
func unitSignJWT(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	var signingKey any = key
	if kid != "" {
		signingKey = jose.JSONWebKey{Key: key, KeyID: kid}
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: signingKey}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// unitJWKSServer serves a JWKS document that the test can change, and counts
// fetches.
type unitJWKSServer struct {
	srv     *httptest.Server
	fetches atomic.Int32
	mu      sync.Mutex
	status  int
	body    []byte
}

func newUnitJWKSServer(t *testing.T, keys ...jose.JSONWebKey) *unitJWKSServer {
	t.Helper()
	s := &unitJWKSServer{}
	s.publish(t, keys...)
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		status, body := s.status, s.body
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *unitJWKSServer) publish(t *testing.T, keys ...jose.JSONWebKey) {
	t.Helper()
	body, err := json.Marshal(jose.JSONWebKeySet{Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	s.serve(http.StatusOK, body)
}

func (s *unitJWKSServer) serve(status int, body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status, s.body = status, body
}

func (s *unitJWKSServer) keySet() *remoteKeys {
	return &remoteKeys{url: s.srv.URL, client: s.srv.Client()}
}

func unitSigKey(pub any, kid, alg string) jose.JSONWebKey {
	return jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: alg, Use: "sig"}
}

var unitClaims = map[string]any{"iss": "https://news.plirotest.page", "sub": testSubject}

func TestRemoteKeysVerifiesES256AndRS256(t *testing.T) {
	ec := unitECKey(t, elliptic.P256())
	rk := unitRSA2048()
	srv := newUnitJWKSServer(t, unitSigKey(&ec.PublicKey, "ec-1", "ES256"), unitSigKey(&rk.PublicKey, "rsa-1", "RS256"))
	keys := srv.keySet()
	ctx := context.Background()

	for _, tc := range []struct {
		name string
		raw  string
	}{
		{"ES256", unitSignJWT(t, jose.ES256, ec, "ec-1", unitClaims)},
		{"RS256", unitSignJWT(t, jose.RS256, rk, "rsa-1", unitClaims)},
		// A token without kid is tried against every key.
		{"ES256 without kid", unitSignJWT(t, jose.ES256, ec, "", unitClaims)},
	} {
		payload, err := keys.VerifySignature(ctx, tc.raw)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !strings.Contains(string(payload), testSubject) {
			t.Errorf("%s: payload %s", tc.name, payload)
		}
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Errorf("JWKS fetched %d times, want once (then cached)", n)
	}
}

// TestRemoteKeysRefusesAlgorithmConfusion: an attacker "signs" a token with
// HMAC, using as the secret something public (the provider's public key, or
// the JWKS document), or sends alg none. Only ES256 and RS256 may pass, and
// such a token must not even make the module fetch the JWKS.
func TestRemoteKeysRefusesAlgorithmConfusion(t *testing.T) {
	ec := unitECKey(t, elliptic.P256())
	srv := newUnitJWKSServer(t, unitSigKey(&ec.PublicKey, "ec-1", "ES256"))
	keys := srv.keySet()
	header := func() map[string]any { return map[string]any{"kid": "ec-1", "typ": "JWT"} }
	claims := map[string]any{"iss": "https://news.plirotest.page", "sub": "cus_victim"}

	for _, tc := range []struct {
		name string
		raw  string
	}{
		{"HS256 keyed with the public key", signHS256(publicKeyPEMBytes(t, &ec.PublicKey), header(), claims)},
		{"HS256 keyed with the JWKS", signHS256(srv.body, header(), claims)},
		{"none", signNone(header(), claims)},
		{"ES384", unitSignJWT(t, jose.ES384, unitECKey(t, elliptic.P384()), "ec-1", claims)},
		{"PS256", unitSignJWT(t, jose.PS256, unitRSA2048(), "ec-1", claims)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if payload, err := keys.VerifySignature(context.Background(), tc.raw); err == nil {
				t.Fatalf("forged token accepted: %s", payload)
			}
		})
	}
	if n := srv.fetches.Load(); n != 0 {
		t.Errorf("a token with a refused algorithm made the module fetch the JWKS %d times", n)
	}
}

// TestRemoteKeysRefusesForeignSignature: a token signed by a key the
// provider never published is refused, even when it names a published kid.
func TestRemoteKeysRefusesForeignSignature(t *testing.T) {
	ec := unitECKey(t, elliptic.P256())
	srv := newUnitJWKSServer(t, unitSigKey(&ec.PublicKey, "ec-1", "ES256"))
	attacker := unitECKey(t, elliptic.P256())
	for _, kid := range []string{"ec-1", ""} {
		if _, err := srv.keySet().VerifySignature(context.Background(), unitSignJWT(t, jose.ES256, attacker, kid, unitClaims)); err == nil {
			t.Fatalf("token signed by the attacker's key (kid %q) accepted", kid)
		}
	}
}

// TestRemoteKeysRefetchIsRateLimited: a token naming an unknown kid makes
// the module refetch the JWKS (the provider may have rotated its key), but
// a flood of such tokens (junk, or forged) must not make Caddy hammer the
// provider: at most one fetch per jwksMinRefetch.
func TestRemoteKeysRefetchIsRateLimited(t *testing.T) {
	clock := useUnitClock(t)
	oldKey, newKey := unitECKey(t, elliptic.P256()), unitECKey(t, elliptic.P256())
	srv := newUnitJWKSServer(t, unitSigKey(&oldKey.PublicKey, "old", "ES256"))
	keys := srv.keySet()
	ctx := context.Background()
	fetches := func() int { return int(srv.fetches.Load()) }

	if _, err := keys.VerifySignature(ctx, unitSignJWT(t, jose.ES256, oldKey, "old", unitClaims)); err != nil {
		t.Fatal(err)
	}
	if fetches() != 1 {
		t.Fatalf("%d fetches after the first token, want 1", fetches())
	}

	// The provider rotates; a token with the new kid arrives after the
	// minimum interval: one refetch, and it verifies.
	srv.publish(t, unitSigKey(&oldKey.PublicKey, "old", "ES256"), unitSigKey(&newKey.PublicKey, "new", "ES256"))
	clock.advance(jwksMinRefetch + time.Second)
	if _, err := keys.VerifySignature(ctx, unitSignJWT(t, jose.ES256, newKey, "new", unitClaims)); err != nil {
		t.Fatalf("token with the rotated key: %v", err)
	}
	if fetches() != 2 {
		t.Fatalf("%d fetches after the rotation, want 2", fetches())
	}

	// Junk kids within the interval: refused, no fetch.
	clock.advance(jwksMinRefetch / 2)
	for i := range 20 {
		junk := unitSignJWT(t, jose.ES256, unitECKey(t, elliptic.P256()), "junk-"+string(rune('a'+i)), unitClaims)
		if _, err := keys.VerifySignature(ctx, junk); err == nil {
			t.Fatal("junk token accepted")
		}
	}
	if fetches() != 2 {
		t.Fatalf("%d fetches after junk within %s, want still 2", fetches(), jwksMinRefetch)
	}
	// Known keys keep working meanwhile.
	if _, err := keys.VerifySignature(ctx, unitSignJWT(t, jose.ES256, oldKey, "old", unitClaims)); err != nil {
		t.Fatal(err)
	}

	// After the interval, one more unknown kid may fetch again, once, even
	// when many requests bring it at the same moment.
	clock.advance(jwksMinRefetch)
	junk := unitSignJWT(t, jose.ES256, unitECKey(t, elliptic.P256()), "junk-later", unitClaims)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() { _, _ = keys.VerifySignature(ctx, junk) })
	}
	wg.Wait()
	if fetches() != 3 {
		t.Fatalf("%d fetches after concurrent junk past the interval, want 3", fetches())
	}
}

func TestRemoteKeysSkipsUnusableKeys(t *testing.T) {
	good := unitECKey(t, elliptic.P256())
	encKey := unitECKey(t, elliptic.P256())
	goodJWK, err := json.Marshal(unitSigKey(&good.PublicKey, "good", "ES256"))
	if err != nil {
		t.Fatal(err)
	}
	encJWK, err := json.Marshal(jose.JSONWebKey{Key: &encKey.PublicKey, KeyID: "enc", Use: "enc", Algorithm: "ECDH-ES"})
	if err != nil {
		t.Fatal(err)
	}
	privJWK, err := json.Marshal(jose.JSONWebKey{Key: unitECKey(t, elliptic.P256()), KeyID: "private", Algorithm: "ES256"})
	if err != nil {
		t.Fatal(err)
	}
	doc := `{"keys":[` + strings.Join([]string{
		string(encJWK), // for encryption, not signatures (RFC 7517 §4.2)
		`{"kty":"PQC-FUTURE","kid":"future","x":"AAAA"}`, // unknown kty
		`{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}`,      // a symmetric key has no place here
		`{"kty":"EC","kid":"broken","crv":"P-256","x":"!!","y":"!!"}`,
		string(privJWK), // private keys are not published keys
		`"not an object"`,
		string(goodJWK),
	}, ",") + `]}`
	srv := newUnitJWKSServer(t)
	srv.serve(http.StatusOK, []byte(doc))
	keys := srv.keySet()

	if _, err := keys.VerifySignature(context.Background(), unitSignJWT(t, jose.ES256, good, "good", unitClaims)); err != nil {
		t.Fatalf("the usable key among unusable ones: %v", err)
	}
	if n := len(keys.keys); n != 1 {
		t.Errorf("kept %d keys, want only the usable one", n)
	}
	// A key published for encryption must not verify signatures.
	if _, err := keys.VerifySignature(context.Background(), unitSignJWT(t, jose.ES256, encKey, "enc", unitClaims)); err == nil {
		t.Error("a token signed with the encryption key was accepted")
	}
}

// TestRemoteKeysRefusesWeakRSAKey: RFC 7518 §3.3 requires RSA keys of at
// least 2048 bits for RS256; parsePublicKeys refuses smaller pinned keys, and
// a JWKS must not let one in by the back door.
func TestRemoteKeysRefusesWeakRSAKey(t *testing.T) {
	weak := unitRSA1024()
	srv := newUnitJWKSServer(t, unitSigKey(&weak.PublicKey, "weak", "RS256"))
	if _, err := srv.keySet().VerifySignature(context.Background(), unitSignJWT(t, jose.RS256, weak, "weak", unitClaims)); err == nil {
		t.Fatal("token signed with a 1024-bit RSA key from the JWKS accepted")
	}
}

func TestRemoteKeysBrokenJWKSKeepsOldKeys(t *testing.T) {
	key := unitECKey(t, elliptic.P256())
	for _, tc := range []struct {
		name   string
		status int
		body   []byte
	}{
		{"not JSON", http.StatusOK, []byte("<html>maintenance</html>")},
		{"oversized", http.StatusOK, []byte(`{"keys":[],"padding":"` + strings.Repeat("x", maxJWKSBytes+1) + `"}`)},
		{"server error", http.StatusInternalServerError, []byte(`{"keys":[]}`)},
		{"no usable key", http.StatusOK, []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`)},
		{"empty object", http.StatusOK, []byte(`{}`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := useUnitClock(t)
			srv := newUnitJWKSServer(t, unitSigKey(&key.PublicKey, "k1", "ES256"))
			keys := srv.keySet()
			ctx := context.Background()
			good := unitSignJWT(t, jose.ES256, key, "k1", unitClaims)
			if _, err := keys.VerifySignature(ctx, good); err != nil {
				t.Fatal(err)
			}

			srv.serve(tc.status, tc.body)
			clock.advance(jwksMinRefetch + time.Second)
			unknown := unitSignJWT(t, jose.ES256, unitECKey(t, elliptic.P256()), "k2", unitClaims)
			_, err := keys.VerifySignature(ctx, unknown)
			if err == nil || !strings.Contains(err.Error(), "fetching the provider's signing keys") {
				t.Fatalf("error %v, want a fetch error", err)
			}
			if srv.fetches.Load() != 2 {
				t.Fatalf("%d fetches, want 2", srv.fetches.Load())
			}
			// The keys held before the broken fetch still verify.
			if _, err := keys.VerifySignature(ctx, good); err != nil {
				t.Fatalf("old key lost after a broken JWKS: %v", err)
			}
		})
	}
}

func TestParsePublicKeys(t *testing.T) {
	ec := unitECKey(t, elliptic.P256())
	ec2 := unitECKey(t, elliptic.P256())
	rsaKey := unitRSA2048()
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPEM := publicKeyPEMBytes(t, &ec.PublicKey)
	for _, tc := range []struct {
		name     string
		pem      []byte
		wantKeys int
		wantErr  string
	}{
		{name: "EC P-256", pem: ecPEM, wantKeys: 1},
		{name: "RSA 2048", pem: publicKeyPEMBytes(t, &rsaKey.PublicKey), wantKeys: 1},
		{name: "certificate", pem: certificatePEMBytes(t, ec), wantKeys: 1},
		{name: "two keys spanning a rotation", pem: append(append([]byte{}, ecPEM...), publicKeyPEMBytes(t, &ec2.PublicKey)...), wantKeys: 2},
		{name: "text around the block", pem: []byte("Pliro signing key, 2025:\n" + string(ecPEM) + "\n-- end --\n"), wantKeys: 1},
		{name: "empty", pem: nil, wantErr: "no PEM public key found"},
		{name: "garbage", pem: []byte("this is not a key"), wantErr: "no PEM public key found"},
		{name: "broken PUBLIC KEY block", pem: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")}), wantErr: "parsing PUBLIC KEY block"},
		{name: "broken CERTIFICATE block", pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")}), wantErr: "parsing CERTIFICATE block"},
		{name: "private key", pem: privateKeyPEMBytes(t, ec), wantErr: "never a private key"},
		{name: "EC private key", pem: func() []byte {
			der, _ := x509.MarshalECPrivateKey(ec)
			return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
		}(), wantErr: "never a private key"},
		{name: "public key followed by private key", pem: append(append([]byte{}, ecPEM...), privateKeyPEMBytes(t, ec)...), wantErr: "never a private key"},
		{name: "RSA 1024", pem: publicKeyPEMBytes(t, &unitRSA1024().PublicKey), wantErr: "at least 2048 bits"},
		{name: "EC P-384", pem: publicKeyPEMBytes(t, &unitECKey(t, elliptic.P384()).PublicKey), wantErr: "P-256"},
		{name: "Ed25519", pem: publicKeyPEMBytes(t, edPub), wantErr: "unsupported public key type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys, err := parsePublicKeys(tc.pem)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != tc.wantKeys {
				t.Fatalf("got %d keys, want %d", len(keys), tc.wantKeys)
			}
		})
	}
}
