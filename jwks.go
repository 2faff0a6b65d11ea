package pliro

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// signingAlgs are the only JWS algorithms accepted on any token: Pliro signs
// with ES256; RS256 is the OIDC default (Core §15.1). "none" and the HMAC
// family are never accepted: HS256 "signed" with a public key or the client
// secret is the classic algorithm-confusion forgery (RFC 8725 §2.1, §3.1).
var signingAlgs = []jose.SignatureAlgorithm{jose.ES256, jose.RS256}

var signingAlgNames = []string{string(jose.ES256), string(jose.RS256)}

// errFetchingKeys: the JWKS could not be fetched.
var errFetchingKeys = errors.New("fetching the provider's signing keys")

// jwksMinRefetch bounds how often Pliro's JWKS is fetched: a token with an
// unknown key ID (Pliro rotated its key, or somebody sends junk) triggers a
// refetch at most once per interval, so a flood of forged tokens cannot make
// Caddy hammer Pliro.
const jwksMinRefetch = 10 * time.Second

// maxJWKSBytes bounds the JWKS document read from the network.
const maxJWKSBytes = 1 << 20

// remoteKeys is Pliro's JWKS, fetched on first use and refetched (rate
// limited) when a token names a key ID it does not hold. It implements
// go-oidc's KeySet.
type remoteKeys struct {
	url    string
	client *http.Client

	fetchMu sync.Mutex // one fetch at a time

	mu          sync.RWMutex
	keys        []jose.JSONWebKey
	lastAttempt time.Time
}

func (k *remoteKeys) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSignedCompact(raw, signingAlgs)
	if err != nil {
		return nil, fmt.Errorf("parsing token: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("token must carry exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID

	k.mu.RLock()
	keys, attempted := k.keys, k.lastAttempt
	k.mu.RUnlock()
	if payload, ok := verifyWithKeys(jws, keys, kid); ok {
		return payload, nil
	}
	keys, err = k.refresh(ctx, attempted)
	if err != nil {
		return nil, err
	}
	if payload, ok := verifyWithKeys(jws, keys, kid); ok {
		return payload, nil
	}
	return nil, fmt.Errorf("no signing key of the provider verifies this token (kid %q)", kid)
}

// refresh fetches the JWKS unless another goroutine did so since the caller
// looked (seen), or the last attempt is more recent than jwksMinRefetch.
func (k *remoteKeys) refresh(ctx context.Context, seen time.Time) ([]jose.JSONWebKey, error) {
	k.fetchMu.Lock()
	defer k.fetchMu.Unlock()
	k.mu.RLock()
	keys, last := k.keys, k.lastAttempt
	k.mu.RUnlock()
	if last.After(seen) || (!last.IsZero() && now().Sub(last) < jwksMinRefetch) {
		return keys, nil
	}
	fetched, err := k.fetch(context.WithoutCancel(ctx)) // bounded by the client timeout
	k.mu.Lock()
	defer k.mu.Unlock()
	k.lastAttempt = now()
	if err != nil {
		return k.keys, fmt.Errorf("%w: %v", errFetchingKeys, err)
	}
	k.keys = fetched
	return fetched, nil
}

func (k *remoteKeys) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(withEndpoint(ctx, endpointJWKS), http.MethodGet, k.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s", k.url, resp.Status)
	}
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxJWKSBytes)).Decode(&doc); err != nil {
		return nil, fmt.Errorf("decoding JWKS: %w", err)
	}
	// Keys of types this module does not use (or cannot parse) are skipped
	// rather than failing the whole set (RFC 7517 §5).
	var keys []jose.JSONWebKey
	for _, raw := range doc.Keys {
		var key jose.JSONWebKey
		if key.UnmarshalJSON(raw) != nil || !key.Valid() || !key.IsPublic() {
			continue
		}
		if (key.Use != "" && key.Use != "sig") || checkKeyStrength(key.Key) != nil {
			continue
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, errors.New("JWKS holds no usable signing key")
	}
	return keys, nil
}

// verifyWithKeys checks the signature with the keys whose kid matches (all
// keys when the token names none).
func verifyWithKeys(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid string) ([]byte, bool) {
	for _, key := range keys {
		if kid != "" && key.KeyID != kid {
			continue
		}
		if payload, err := jws.Verify(key.Key); err == nil {
			return payload, true
		}
	}
	return nil, false
}

// checkKeyStrength accepts the keys of the accepted algorithms only, and
// RSA keys of at least 2048 bits (RFC 7518 §3.3): a weak key in a JWKS is
// skipped, so nobody can sign with a key they factored.
func checkKeyStrength(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return errors.New("EC public key must be on P-256 (ES256)")
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return errors.New("RSA public key must have at least 2048 bits")
		}
	default:
		return fmt.Errorf("unsupported public key type %T: want EC P-256 or RSA", pub)
	}
	return nil
}

// parsePublicKeys reads the PEM public keys Pliro publishes ("PUBLIC KEY"
// blocks, or certificates). Several keys may be given to span a rotation.
// Only EC P-256 (ES256) and RSA of at least 2048 bits (RS256) are accepted.
func parsePublicKeys(pemBytes []byte) ([]any, error) {
	var keys []any
	for {
		block, rest := pem.Decode(pemBytes)
		if block == nil {
			break
		}
		pemBytes = rest
		var pub any
		switch block.Type {
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parsing PUBLIC KEY block: %w", err)
			}
			pub = k
		case "CERTIFICATE":
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parsing CERTIFICATE block: %w", err)
			}
			pub = cert.PublicKey
		default:
			return nil, fmt.Errorf("unexpected PEM block %q: give Pliro's public key (PUBLIC KEY), never a private key", block.Type)
		}
		if err := checkKeyStrength(pub); err != nil {
			return nil, err
		}
		keys = append(keys, pub)
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM public key found")
	}
	return keys, nil
}
