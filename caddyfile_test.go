package pliro

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
)

func caddyfileBool(b bool) *bool { return &b }

func TestUnmarshalCaddyfile(t *testing.T) {
	const required = `
		issuer https://news.plirotest.page
		client_id news-web
		client_secret {env.PLIRO_CLIENT_SECRET}`
	base := func(h Handler) Handler {
		h.Issuer = "https://news.plirotest.page"
		h.ClientID = "news-web"
		h.ClientSecret = "{env.PLIRO_CLIENT_SECRET}"
		return h
	}
	for i, tc := range []struct {
		name    string
		input   string
		want    Handler
		wantErr string
	}{
		{
			name:  "required subdirectives only",
			input: "pliro {" + required + "\n}",
			want:  base(Handler{}),
		},
		{
			name: "every subdirective",
			input: `pliro {
				issuer https://account.example-news.com
				client_id news-web
				client_secret {file./run/secrets/pliro}
				scopes openid email profile
				public_key_file /etc/caddy/pliro.pem
				pkce on
				token_auth_method client_secret_post
				redirect_uri https://www.example-news.com/auth/callback
				sign_in_path /auth/sign-in
				sign_out_path /auth/sign-out
				backchannel_logout_path /auth/backchannel
				cookie_name news_session
				idle_timeout 14d
				max_lifetime 90d
				clock_skew 30s
				identity_headers X-Reader-
				end_provider_session off
				post_logout_redirect_uri /goodbye
				sign_out_redirect /signed-out
				logout_token_max_age 30m
				refresh_interval 15m
				userinfo_timeout 3s
				reauth_interval 30m
				auto_sign_in 1d
			}`,
			want: Handler{
				Issuer:                "https://account.example-news.com",
				ClientID:              "news-web",
				ClientSecret:          "{file./run/secrets/pliro}",
				Scopes:                []string{"openid", "email", "profile"},
				PublicKeyFile:         "/etc/caddy/pliro.pem",
				PKCE:                  "on",
				TokenAuthMethod:       "client_secret_post",
				RedirectURI:           "https://www.example-news.com/auth/callback",
				SignInPath:            "/auth/sign-in",
				SignOutPath:           "/auth/sign-out",
				BackchannelLogoutPath: "/auth/backchannel",
				CookieName:            "news_session",
				IdleTimeout:           caddy.Duration(14 * 24 * time.Hour),
				MaxLifetime:           caddy.Duration(90 * 24 * time.Hour),
				ClockSkew:             caddy.Duration(30 * time.Second),
				IdentityHeaderPrefix:  "X-Reader-",
				EndProviderSession:    caddyfileBool(false),
				PostLogoutRedirectURI: "/goodbye",
				SignOutRedirect:       "/signed-out",
				LogoutTokenMaxAge:     caddy.Duration(30 * time.Minute),
				RefreshInterval:       caddy.Duration(15 * time.Minute),
				UserinfoTimeout:       caddy.Duration(3 * time.Second),
				ReauthInterval:        caddy.Duration(30 * time.Minute),
				AutoSignIn:            caddy.Duration(24 * time.Hour),
			},
		},
		{
			// off: refresh_interval negative (its zero means the default),
			// reauth_interval and auto_sign_in zero (their default).
			name:  "periodic features off",
			input: "pliro {" + required + "\nrefresh_interval off\nreauth_interval off\nauto_sign_in off\n}",
			want:  base(Handler{RefreshInterval: -1}),
		},
		{
			name:  "issuer from the environment, checked after expansion",
			input: "pliro {\nissuer {env.PLIRO_ISSUER}\nclient_id {env.PLIRO_CLIENT_ID}\nclient_secret {env.PLIRO_CLIENT_SECRET}\n}",
			want:  Handler{Issuer: "{env.PLIRO_ISSUER}", ClientID: "{env.PLIRO_CLIENT_ID}", ClientSecret: "{env.PLIRO_CLIENT_SECRET}"},
		},
		{
			name:  "store memory is the default",
			input: "pliro {" + required + "\nstore memory\n}",
			want:  base(Handler{}),
		},
		{
			name:  "store redis",
			input: "pliro {" + required + "\nstore redis 127.0.0.1:6379\n}",
			want:  base(Handler{Store: &StoreConfig{Redis: &RedisStoreConfig{Addresses: []string{"127.0.0.1:6379"}}}}),
		},
		{
			name:  "identity_headers without prefix uses X-Pliro-",
			input: "pliro {" + required + "\nidentity_headers\n}",
			want:  base(Handler{IdentityHeaderPrefix: "X-Pliro-"}),
		},
		{
			name:  "identity_headers with prefix",
			input: "pliro {" + required + "\nidentity_headers X-Customer-\n}",
			want:  base(Handler{IdentityHeaderPrefix: "X-Customer-"}),
		},
		{
			name:  "end_provider_session on",
			input: "pliro {" + required + "\nend_provider_session on\n}",
			want:  base(Handler{EndProviderSession: caddyfileBool(true)}),
		},
		{
			name:  "end_provider_session off",
			input: "pliro {" + required + "\nend_provider_session off\n}",
			want:  base(Handler{EndProviderSession: caddyfileBool(false)}),
		},
		{
			name:  "end_provider_session takes Go booleans too",
			input: "pliro {" + required + "\nend_provider_session false\n}",
			want:  base(Handler{EndProviderSession: caddyfileBool(false)}),
		},
		{
			name:  "durations in minutes and hours",
			input: "pliro {" + required + "\nidle_timeout 30m\nmax_lifetime 12h\nclock_skew 90s\nlogout_token_max_age 2m\n}",
			want: base(Handler{
				IdleTimeout:       caddy.Duration(30 * time.Minute),
				MaxLifetime:       caddy.Duration(12 * time.Hour),
				ClockSkew:         caddy.Duration(90 * time.Second),
				LogoutTokenMaxAge: caddy.Duration(2 * time.Minute),
			}),
		},
		{
			name:  "http issuer on localhost for development",
			input: "pliro {\nissuer http://localhost:4000\nclient_id news-web\nclient_secret {env.S}\n}",
			want:  Handler{Issuer: "http://localhost:4000", ClientID: "news-web", ClientSecret: "{env.S}"},
		},
		{
			name:  "http issuer on 127.0.0.1 for development",
			input: "pliro {\nissuer http://127.0.0.1:4000\nclient_id news-web\nclient_secret {env.S}\n}",
			want:  Handler{Issuer: "http://127.0.0.1:4000", ClientID: "news-web", ClientSecret: "{env.S}"},
		},

		// Errors.
		{
			name:    "unknown subdirective",
			input:   "pliro {" + required + "\nissuer_url https://news.plirotest.page\n}",
			wantErr: "unrecognized subdirective 'issuer_url'",
		},
		{
			name:    "duplicate subdirective",
			input:   "pliro {" + required + "\nclient_id other\n}",
			wantErr: "duplicate subdirective 'client_id'",
		},
		{
			name:    "duplicate identity_headers",
			input:   "pliro {" + required + "\nidentity_headers\nidentity_headers X-Other-\n}",
			wantErr: "duplicate subdirective 'identity_headers'",
		},
		{
			name:    "argument on the directive line",
			input:   "pliro https://news.plirotest.page {" + required + "\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "missing argument",
			input:   "pliro {" + required + "\ncookie_name\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "missing duration",
			input:   "pliro {" + required + "\nidle_timeout\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "missing scopes",
			input:   "pliro {" + required + "\nscopes\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "missing end_provider_session value",
			input:   "pliro {" + required + "\nend_provider_session\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "extra argument",
			input:   "pliro {" + required + "\nsign_in_path /sign-in /login\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "extra duration argument",
			input:   "pliro {" + required + "\nmax_lifetime 90d 14d\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "identity_headers with two prefixes",
			input:   "pliro {" + required + "\nidentity_headers X-A- X-B-\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "extra end_provider_session argument",
			input:   "pliro {" + required + "\nend_provider_session on off\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "bad duration",
			input:   "pliro {" + required + "\nidle_timeout two-weeks\n}",
			wantErr: `idle_timeout: bad duration "two-weeks"`,
		},
		{
			name:    "a duration that cannot be off",
			input:   "pliro {" + required + "\nidle_timeout off\n}",
			wantErr: "idle_timeout cannot be off",
		},
		{
			name:    "unknown store",
			input:   "pliro {" + required + "\nstore files\n}",
			wantErr: `store must be memory or redis, not "files"`,
		},
		{
			name:    "store without kind",
			input:   "pliro {" + required + "\nstore\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "store memory with an address",
			input:   "pliro {" + required + "\nstore memory 127.0.0.1:6379\n}",
			wantErr: "wrong argument count",
		},
		{
			name:    "bad end_provider_session",
			input:   "pliro {" + required + "\nend_provider_session sometimes\n}",
			wantErr: `want on or off, not "sometimes"`,
		},
		{
			name:    "no block at all",
			input:   "pliro",
			wantErr: "issuer is required",
		},
		{
			name:    "missing issuer",
			input:   "pliro {\nclient_id news-web\nclient_secret {env.S}\n}",
			wantErr: "issuer is required",
		},
		{
			name:    "missing client_id",
			input:   "pliro {\nissuer https://news.plirotest.page\nclient_secret {env.S}\n}",
			wantErr: "client_id is required",
		},
		{
			name:    "missing client_secret",
			input:   "pliro {\nissuer https://news.plirotest.page\nclient_id news-web\n}",
			wantErr: "client_secret is required",
		},
		{
			name:    "http issuer other than localhost",
			input:   "pliro {\nissuer http://news.plirotest.page\nclient_id news-web\nclient_secret {env.S}\n}",
			wantErr: "must use https",
		},
		{
			// localhost.evil.example is not localhost.
			name:    "http issuer that only starts with localhost",
			input:   "pliro {\nissuer http://localhost.evil.example\nclient_id news-web\nclient_secret {env.S}\n}",
			wantErr: "must use https",
		},
		{
			name:    "issuer that is not a URL",
			input:   "pliro {\nissuer news.plirotest.page\nclient_id news-web\nclient_secret {env.S}\n}",
			wantErr: "must be an absolute URL",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Handler
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("test %d: expected error containing %q, got none; parsed %+v", i, tc.wantErr, got)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("test %d: error %q, want it to contain %q", i, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("test %d: unexpected error: %v", i, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("test %d:\n got %+v\nwant %+v", i, got, tc.want)
			}
		})
	}
}

func TestUnmarshalCaddyfileRequire(t *testing.T) {
	for i, tc := range []struct {
		name    string
		input   string
		want    Require
		wantErr string
	}{
		{
			name:  "no arguments: any signed-in customer",
			input: "pliro_require",
			want:  Require{},
		},
		{
			name:  "empty block: any signed-in customer",
			input: "pliro_require {\n}",
			want:  Require{},
		},
		{
			name:  "inline plans",
			input: "pliro_require plan premium premium-plus",
			want:  Require{Plans: []string{"premium", "premium-plus"}},
		},
		{
			name:  "block form",
			input: "pliro_require {\n\tplan premium premium-plus\n}",
			want:  Require{Plans: []string{"premium", "premium-plus"}},
		},
		{
			name: "claims and subscribe_url",
			input: `pliro_require {
				plan premium
				claim role editor admin
				claim newsletter true
				subscribe_url https://news.plirotest.page/offers/premium/subscribe
			}`,
			want: Require{
				Plans:        []string{"premium"},
				Claims:       map[string][]string{"role": {"editor", "admin"}, "newsletter": {"true"}},
				SubscribeURL: "https://news.plirotest.page/offers/premium/subscribe",
			},
		},
		{
			name:  "subscribe_url with redirect",
			input: "pliro_require {\n\tplan premium\n\tsubscribe_url {env.PLIRO_ISSUER}/subscribe redirect\n}",
			want: Require{
				Plans:               []string{"premium"},
				SubscribeURL:        "{env.PLIRO_ISSUER}/subscribe",
				RedirectToSubscribe: true,
			},
		},
		{
			name:    "claim without value",
			input:   "pliro_require {\n\tclaim role\n}",
			wantErr: "claim needs a claim name and at least one value",
		},
		{
			name:    "same claim twice",
			input:   "pliro_require {\n\tclaim role editor\n\tclaim role admin\n}",
			wantErr: "duplicate claim 'role'",
		},
		{
			name:    "subscribe_url twice",
			input:   "pliro_require {\n\tsubscribe_url https://a.example/\n\tsubscribe_url https://b.example/\n}",
			wantErr: "duplicate subdirective 'subscribe_url'",
		},
		{
			name:    "subscribe_url without URL",
			input:   "pliro_require {\n\tsubscribe_url\n}",
			wantErr: "usage: subscribe_url <url> [redirect]",
		},
		{
			name:    "subscribe_url with a stray argument",
			input:   "pliro_require {\n\tsubscribe_url https://a.example/ now\n}",
			wantErr: "usage: subscribe_url <url> [redirect]",
		},
		{
			name:    "plan without slugs",
			input:   "pliro_require plan",
			wantErr: "plan needs at least one plan slug",
		},
		{
			name:    "plan without slugs in a block",
			input:   "pliro_require {\n\tplan\n}",
			wantErr: "plan needs at least one plan slug",
		},
		{
			// A bare slug is the likely slip: "pliro_require premium".
			name:    "slug without plan",
			input:   "pliro_require premium",
			wantErr: "unrecognized subdirective 'premium'",
		},
		{
			name:    "unknown subdirective in a block",
			input:   "pliro_require {\n\tplans premium\n}",
			wantErr: "unrecognized subdirective 'plans'",
		},
		{
			name:    "plan twice in a block",
			input:   "pliro_require {\n\tplan premium\n\tplan premium-plus\n}",
			wantErr: "duplicate subdirective 'plan'",
		},
		{
			name:    "plan inline and in a block",
			input:   "pliro_require plan premium {\n\tplan premium-plus\n}",
			wantErr: "duplicate subdirective 'plan'",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Require
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil {
					t.Fatalf("test %d: expected error containing %q, got none; parsed %+v", i, tc.wantErr, got)
				}
				if !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("test %d: error %q, want it to contain %q", i, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("test %d: unexpected error: %v", i, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("test %d: got %+v, want %+v", i, got, tc.want)
			}
		})
	}
}

// adaptDir holds the adapt tests: a Caddyfile, a line of ten dashes, then
// either the expected JSON or (when it does not start with "{") a part of the
// expected error, as in caddy's caddytest/integration/caddyfile_adapt.
const adaptDir = "testdata/caddyfile_adapt"

// adaptSeparator splits a .caddyfiletest file.
const adaptSeparator = "----------"

func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(adaptDir, "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no adapt tests found in %s", adaptDir)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			runAdaptTest(t, file)
		})
	}
}

var adaptNewlines = regexp.MustCompile(`\r?\n`)

func runAdaptTest(t *testing.T, file string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(adaptNewlines.ReplaceAllString(string(data), "\n"), adaptSeparator)
	if len(parts) != 2 {
		t.Fatalf("%s: want one %q line between the Caddyfile and the expected output, found %d parts", file, adaptSeparator, len(parts))
	}
	input, expected := strings.TrimSpace(parts[0])+"\n", strings.TrimSpace(parts[1])
	// file_server hides the Caddyfile by its OS-specific path, as in caddy's
	// own adapt tests.
	hide, _ := json.Marshal("." + string(filepath.Separator) + "Caddyfile")
	expected = strings.ReplaceAll(expected, `"./Caddyfile"`, string(hide))
	if strings.HasPrefix(expected, "{") {
		if !caddytest.CompareAdapt(t, file, input, "caddyfile", expected) {
			t.Errorf("%s: adapted JSON differs from the expected (diff on stdout)", file)
		}
		return
	}
	_, _, err = caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err == nil {
		t.Fatalf("%s: expected an error containing %q, got none", file, expected)
	}
	if !strings.Contains(err.Error(), expected) {
		t.Errorf("%s: error %q, want it to contain %q", file, err, expected)
	}
}

// TestAdaptKeepsSecretPlaceholder: `caddy adapt` output is often committed,
// pasted into tickets or loaded through the admin API. With
// client_secret {env.PLIRO_CLIENT_SECRET} the adapted JSON must carry the
// placeholder, expanded only at provision time, even when the variable is
// set while adapting. ({$PLIRO_CLIENT_SECRET} would be baked in: that is why
// the docs avoid it for secrets.)
func TestAdaptKeepsSecretPlaceholder(t *testing.T) {
	const secret = "pliro-secret-must-not-be-baked-in"
	t.Setenv("PLIRO_CLIENT_SECRET", secret)
	input := `example.com {
	pliro {
		issuer https://news.plirotest.page
		client_id news-web
		client_secret {env.PLIRO_CLIENT_SECRET}
	}
	respond "hello"
}
`
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), secret) {
		t.Fatalf("the adapted config contains the secret:\n%s", out)
	}
	if !strings.Contains(string(out), `"client_secret":"{env.PLIRO_CLIENT_SECRET}"`) {
		t.Fatalf("the adapted config lacks the placeholder:\n%s", out)
	}
}

// TestExampleCaddyfileAdapts keeps the README's example honest: it must
// adapt, be formatted, and keep the secret a placeholder. When the file
// holds a ---------- line and JSON, the JSON is compared too.
//
// TODO(lead): example.Caddyfile is written later; make this test mandatory
// (drop the Skip) once it exists.
func TestExampleCaddyfileAdapts(t *testing.T) {
	const file = "example.Caddyfile"
	data, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		t.Skipf("%s does not exist yet", file)
	}
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), adaptSeparator) {
		runAdaptTest(t, file)
		return
	}
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(data, map[string]any{"filename": file})
	if err != nil {
		t.Fatalf("adapting %s: %v", file, err)
	}
	for _, w := range warnings {
		t.Errorf("%s: warning: %s", file, w)
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	var secrets []string
	for _, m := range regexp.MustCompile(`"client_secret":"([^"]*)"`).FindAllStringSubmatch(string(out), -1) {
		secrets = append(secrets, m[1])
	}
	if len(secrets) == 0 {
		t.Fatalf("%s configures no pliro handler", file)
	}
	for _, s := range secrets {
		if !strings.HasPrefix(s, "{env.") && !strings.HasPrefix(s, "{file.") {
			t.Errorf("%s: client_secret %q must be an {env.*} or {file.*} placeholder", file, s)
		}
	}
}
