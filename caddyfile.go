package pliro

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("pliro", parsePliro)
	httpcaddyfile.RegisterHandlerDirective("pliro_require", parseRequire)
	// Identity first, then access rules, both just before Caddy's own
	// basic_auth and so before anything that proxies or serves content;
	// users need no order line. (An order can only name a standard
	// directive: inserting both before basic_auth, in this order, gives
	// ... pliro, pliro_require, basic_auth ...)
	httpcaddyfile.RegisterDirectiveOrder("pliro", httpcaddyfile.Before, "basic_auth")
	httpcaddyfile.RegisterDirectiveOrder("pliro_require", httpcaddyfile.Before, "basic_auth")
}

// defaultHeaderPrefix is identity_headers' prefix when none is given.
const defaultHeaderPrefix = "X-Pliro-"

// parsePliro sets up the handler from Caddyfile tokens:
//
//	pliro {
//		issuer                   <url>
//		client_id                <id>
//		client_secret            <secret>
//		scopes                   <scope...>
//		public_key_file          <path>
//		pkce                     auto|on|off
//		token_auth_method        client_secret_basic|client_secret_post
//		redirect_uri             <path|url>
//		sign_in_path             <path>
//		sign_out_path            <path>
//		backchannel_logout_path  <path>
//		cookie_name              <name>
//		idle_timeout             <duration>
//		max_lifetime             <duration>
//		clock_skew               <duration>
//		identity_headers         [<prefix>]
//		end_provider_session     on|off
//		post_logout_redirect_uri <path|url>
//		sign_out_redirect        <path>
//		logout_token_max_age     <duration>
//		refresh_interval         <duration>|off
//		userinfo_timeout         <duration>
//		provider_timeout         <duration>
//		reauth_interval          <duration>|off
//		auto_sign_in             <duration>|off
//		store                    memory|redis [<address...>] [{ ... }]
//	}
func parsePliro(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	p := new(Handler)
	if err := p.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return p, nil
}

// UnmarshalCaddyfile implements caddyfile.Unmarshaler.
func (p *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	stringFields := map[string]*string{
		"issuer":                   &p.Issuer,
		"client_id":                &p.ClientID,
		"client_secret":            &p.ClientSecret,
		"public_key_file":          &p.PublicKeyFile,
		"pkce":                     &p.PKCE,
		"token_auth_method":        &p.TokenAuthMethod,
		"redirect_uri":             &p.RedirectURI,
		"sign_in_path":             &p.SignInPath,
		"sign_out_path":            &p.SignOutPath,
		"backchannel_logout_path":  &p.BackchannelLogoutPath,
		"cookie_name":              &p.CookieName,
		"post_logout_redirect_uri": &p.PostLogoutRedirectURI,
		"sign_out_redirect":        &p.SignOutRedirect,
	}
	durations := map[string]*caddy.Duration{
		"idle_timeout":         &p.IdleTimeout,
		"max_lifetime":         &p.MaxLifetime,
		"clock_skew":           &p.ClockSkew,
		"logout_token_max_age": &p.LogoutTokenMaxAge,
		"refresh_interval":     &p.RefreshInterval,
		"userinfo_timeout":     &p.UserinfoTimeout,
		"provider_timeout":     &p.ProviderTimeout,
		"reauth_interval":      &p.ReauthInterval,
		"auto_sign_in":         &p.AutoSignIn,
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return d.Errf("duplicate subdirective '%s'", name)
		}
		seen[name] = true
		switch {
		case stringFields[name] != nil:
			if !d.NextArg() {
				return d.ArgErr()
			}
			*stringFields[name] = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case durations[name] != nil:
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := parseDurationOrOff(d.Val(), name)
			if err != nil {
				return d.Errf("%s: bad duration %q (use e.g. 30m, 12h, 14d): %v", name, d.Val(), err)
			}
			*durations[name] = caddy.Duration(dur)
			if d.NextArg() {
				return d.ArgErr()
			}
		case name == "scopes":
			p.Scopes = d.RemainingArgs()
			if len(p.Scopes) == 0 {
				return d.ArgErr()
			}
		case name == "identity_headers":
			args := d.RemainingArgs()
			switch len(args) {
			case 0:
				p.IdentityHeaderPrefix = defaultHeaderPrefix
			case 1:
				p.IdentityHeaderPrefix = args[0]
			default:
				return d.ArgErr()
			}
		case name == "store":
			if !d.NextArg() {
				return d.ArgErr()
			}
			switch d.Val() {
			case "memory":
				if d.NextArg() {
					return d.ArgErr()
				}
			case "redis":
				cfg, err := parseRedisStore(d)
				if err != nil {
					return err
				}
				p.Store = &StoreConfig{Redis: cfg}
			default:
				return d.Errf("store must be memory or redis, not %q", d.Val())
			}
		case name == "end_provider_session":
			if !d.NextArg() {
				return d.ArgErr()
			}
			on, err := parseOnOff(d.Val())
			if err != nil {
				return d.Errf("end_provider_session: %v", err)
			}
			p.EndProviderSession = &on
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized subdirective '%s'", name)
		}
	}
	// Catch the most common omissions at adapt time, not only at start.
	if p.Issuer == "" {
		return d.Err("pliro: issuer is required (the URL of your Pliro site, e.g. https://news.plirotest.page)")
	}
	if !strings.Contains(p.Issuer, "{") { // placeholders are checked after expansion
		if err := validateIssuer(p.Issuer); err != nil {
			return d.Errf("pliro: %v", err)
		}
	}
	if p.ClientID == "" {
		return d.Err("pliro: client_id is required (the OAuth application's client ID in Pliro)")
	}
	if p.ClientSecret == "" {
		return d.Err("pliro: client_secret is required; give it as {env.PLIRO_CLIENT_SECRET}")
	}
	return nil
}

// parseDurationOrOff reads a duration; "off" turns off the periodic
// features (refresh_interval: -1, reauth_interval and auto_sign_in: 0).
func parseDurationOrOff(v, name string) (time.Duration, error) {
	if v == "off" {
		switch name {
		case "refresh_interval":
			return -1, nil
		case "reauth_interval", "auto_sign_in":
			return 0, nil
		}
		return 0, fmt.Errorf("%s cannot be off", name)
	}
	return caddy.ParseDuration(v)
}

func parseOnOff(v string) (bool, error) {
	switch v {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	if b, err := strconv.ParseBool(v); err == nil {
		return b, nil
	}
	return false, fmt.Errorf("want on or off, not %q", v)
}

// parseRequire sets up pliro_require:
//
//	pliro_require [<matcher>] [plan <slug...>]
//
//	pliro_require [<matcher>] {
//		plan          <slug...>
//		claim         <name> <value...>
//		subscribe_url <url> [redirect]
//	}
func parseRequire(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	rq := new(Require)
	if err := rq.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return rq, nil
}

// UnmarshalCaddyfile implements caddyfile.Unmarshaler.
func (rq *Require) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		if err := rq.parseRule(d); err != nil {
			return err
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := rq.parseRule(d); err != nil {
			return err
		}
	}
	return nil
}

// parseRule reads one rule whose name is the current token.
func (rq *Require) parseRule(d *caddyfile.Dispenser) error {
	switch d.Val() {
	case "plan":
		if len(rq.Plans) > 0 {
			return d.Err("duplicate subdirective 'plan': list every plan slug on one line")
		}
		rq.Plans = d.RemainingArgs()
		if len(rq.Plans) == 0 {
			return d.Err("plan needs at least one plan slug, e.g. plan premium premium-plus")
		}
	case "claim":
		args := d.RemainingArgs()
		if len(args) < 2 {
			return d.Err("claim needs a claim name and at least one value, e.g. claim role editor")
		}
		if rq.Claims == nil {
			rq.Claims = map[string][]string{}
		}
		if _, dup := rq.Claims[args[0]]; dup {
			return d.Errf("duplicate claim '%s': list every value on one line", args[0])
		}
		rq.Claims[args[0]] = args[1:]
	case "subscribe_url":
		if rq.SubscribeURL != "" {
			return d.Err("duplicate subdirective 'subscribe_url'")
		}
		args := d.RemainingArgs()
		switch {
		case len(args) == 1:
		case len(args) == 2 && args[1] == "redirect":
			rq.RedirectToSubscribe = true
		default:
			return d.Err("usage: subscribe_url <url> [redirect]")
		}
		rq.SubscribeURL = args[0]
	default:
		return d.Errf("unrecognized subdirective '%s' (pliro_require takes: plan, claim, subscribe_url)", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*Require)(nil)
)
