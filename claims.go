package pliro

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// customerClaims are the claims Pliro issues about a customer, in the ID
// token and from userinfo. A claim with no value is omitted (or, from some
// servers, null); both read as empty.
type customerClaims struct {
	Subject     string       `json:"sub"`
	ProviderSID string       `json:"sid"`
	Email       string       `json:"email"`
	Name        string       `json:"name"`
	Plan        string       `json:"plan"`
	PlanSlugs   stringOrList `json:"plan_slugs"`

	// Extra holds the other claims with a simple value, for pliro_require's
	// claim rules.
	Extra map[string][]string `json:"-"`

	// AuthTime is when the customer last authenticated at Pliro: the ID
	// token's auth_time (Pliro sends it; OIDC Core §2 makes it optional).
	// Zero when absent, and for userinfo: the iat of an ID token is when
	// the code was redeemed, not when the customer authenticated.
	AuthTime time.Time `json:"-"`
}

func (c *customerClaims) session() *Session {
	return &Session{
		Subject:     c.Subject,
		ProviderSID: c.ProviderSID,
		Email:       c.Email,
		Name:        c.Name,
		Plan:        c.Plan,
		PlanSlugs:   []string(c.PlanSlugs),
		Extra:       c.Extra,
	}
}

// parseCustomerClaims reads a claims object (ID token payload or userinfo
// response).
func parseCustomerClaims(payload []byte) (*customerClaims, error) {
	var c customerClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(payload, &all); err != nil {
		return nil, err
	}
	c.Extra = extraClaims(all)
	return &c, nil
}

// protocolClaims are claims about the token or the sign-in, and the claims
// the session keeps in fields of their own: none of them is an extra.
var protocolClaims = map[string]bool{
	"iss": true, "sub": true, "aud": true, "exp": true, "iat": true, "nbf": true,
	"auth_time": true, "nonce": true, "at_hash": true, "c_hash": true, "azp": true,
	"jti": true, "sid": true, "acr": true, "amr": true,
	"email": true, "name": true, "plan": true, "plan_slugs": true,
}

// sessionClaims are the claims a session keeps in fields of its own.
var sessionClaims = map[string]bool{"sub": true, "sid": true, "email": true, "name": true, "plan": true, "plan_slugs": true}

// Bounds on what extra claims a session keeps, so a provider's large
// claims cannot bloat every session.
const (
	maxExtraClaims     = 16
	maxExtraClaimValue = 256
)

// extraClaims keeps the claims with a string, number, boolean or
// string-list value, as strings.
func extraClaims(all map[string]json.RawMessage) map[string][]string {
	var extra map[string][]string
	for name, raw := range all {
		if protocolClaims[name] || len(extra) >= maxExtraClaims || len(raw) > maxExtraClaimValue {
			continue
		}
		var values stringOrList
		if err := json.Unmarshal(raw, &values); err != nil {
			var scalar any
			if json.Unmarshal(raw, &scalar) != nil {
				continue
			}
			switch scalar.(type) {
			case bool, float64:
				values = stringOrList{string(raw)}
			default:
				continue
			}
		}
		if len(values) == 0 {
			continue
		}
		if extra == nil {
			extra = make(map[string][]string)
		}
		extra[name] = values
	}
	return extra
}

// claimValues returns the session's values of one claim.
func (s *Session) claimValues(name string) []string {
	one := func(v string) []string {
		if v == "" {
			return nil
		}
		return []string{v}
	}
	switch name {
	case "sub":
		return one(s.Subject)
	case "sid":
		return one(s.ProviderSID)
	case "email":
		return one(s.Email)
	case "name":
		return one(s.Name)
	case "plan":
		return one(s.Plan)
	case "plan_slugs":
		return s.PlanSlugs
	}
	return s.Extra[name]
}

// stringOrList reads a JSON array of strings, a single string (space- or
// comma-separated) or null, because Pliro's plan_slugs is documented as an
// array but a bare slug is the likelier mistake than an error.
type stringOrList []string

func (l *stringOrList) UnmarshalJSON(b []byte) error {
	var list []string
	if err := json.Unmarshal(b, &list); err == nil {
		*l = slices.DeleteFunc(list, func(s string) bool { return s == "" })
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a string or a list of strings: %w", err)
	}
	*l = strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' })
	return nil
}

// verifyIDToken checks an ID token from the token endpoint as OIDC Core
// §3.1.3.7 requires and returns its claims. go-oidc checks the signature,
// iss, aud and exp; the rest is checked here.
func (h *Handler) verifyIDToken(ctx context.Context, e *endpoints, raw, nonce, accessToken string) (*customerClaims, error) {
	tok, err := e.idTokens.Verify(ctx, raw)
	if err != nil {
		return nil, err
	}
	// nonce must equal the one sent in this browser's authorization request:
	// it stops a token from another sign-in being replayed or injected
	// (OIDC Core §3.1.3.7 step 11; go-oidc leaves this to the caller).
	if tok.Nonce == "" || subtle.ConstantTimeCompare([]byte(tok.Nonce), []byte(nonce)) != 1 {
		return nil, errors.New("nonce does not match this sign-in")
	}
	var payload json.RawMessage
	if err := tok.Claims(&payload); err != nil {
		return nil, fmt.Errorf("reading claims: %w", err)
	}
	c, err := parseCustomerClaims(payload)
	if err != nil {
		return nil, fmt.Errorf("reading claims: %w", err)
	}
	var azp struct {
		AuthorizedParty string   `json:"azp"`
		AuthTime        *float64 `json:"auth_time"`
	}
	_ = json.Unmarshal(payload, &azp)
	if azp.AuthTime != nil {
		c.AuthTime = time.Unix(int64(*azp.AuthTime), 0)
	}
	// azp: with several audiences it must be present, and when present it
	// must be us (OIDC Core §3.1.3.7 steps 4 and 5).
	if len(tok.Audience) > 1 && azp.AuthorizedParty == "" {
		return nil, errors.New("token has several audiences and no azp")
	}
	if azp.AuthorizedParty != "" && azp.AuthorizedParty != h.ClientID {
		return nil, fmt.Errorf("token was issued to another client (azp %q)", azp.AuthorizedParty)
	}
	// iat is required and must not be in the future beyond the clock skew
	// (OIDC Core §2, §3.1.3.7 step 10).
	if tok.IssuedAt.IsZero() {
		return nil, errors.New("token has no iat")
	}
	if tok.IssuedAt.After(now().Add(h.clockSkew())) {
		return nil, errors.New("token issued in the future (check the clocks)")
	}
	// at_hash, when present, binds the access token to this ID token (OIDC
	// Core §3.1.3.8, §3.2.2.9).
	if tok.AccessTokenHash != "" {
		if err := tok.VerifyAccessToken(accessToken); err != nil {
			return nil, fmt.Errorf("access token does not match at_hash: %w", err)
		}
	}
	if c.Subject == "" {
		return nil, errors.New("token has no sub")
	}
	return c, nil
}
