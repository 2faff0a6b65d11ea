package pliro

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestSecretsNeverLeak runs sign-ins (good and failing), a refresh, a
// back-channel logout and a sign-out with debug logging and error pages
// that print the error message, and then looks for every secret of the run
// in the logs and in every response body: the client secret, authorization
// codes, ID and access tokens, logout tokens and cookie values.
func TestSecretsNeverLeak(t *testing.T) {
	p := newTestProvider(t)
	var mu sync.Mutex
	var secrets []string
	keep := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		if len(s) >= 8 {
			secrets = append(secrets, s)
		}
	}
	keep(testClientSecret)
	p.set(func(p *testProvider) {
		p.sign = func(h, c map[string]any) string {
			tok := p.signES256(h, c)
			keep(tok)
			return tok
		}
	})
	// The callback's URL carries the authorization code and state, and the
	// redirect to Pliro's end_session carries the ID token as id_token_hint;
	// Caddy logs request URIs and, in access logs, response headers. The
	// operator filters them out with Caddy's query filter, as the README
	// shows.
	port := freePort(t)
	dir := t.TempDir()
	site := &testSite{t: t, port: port, base: fmt.Sprintf("http://localhost:%d", port), logFile: filepath.Join(dir, "caddy.log")}
	loadCaddyfile(t, fmt.Sprintf(`{
	admin off
	auto_https off
	storage file_system %s
	log {
		output file %s
		format filter {
			request>uri query {
				delete code
				delete state
			}
		}
		level DEBUG
	}
}
http://localhost:%d {
	log {
		output file %s
		format filter {
			request>uri query {
				delete code
				delete state
			}
			resp_headers>Location query {
				delete id_token_hint
			}
		}
	}
%s
	handle_errors {
		respond "error {err.status_code}: {err.message}"
	}
}
`, filepath.Join(dir, "storage"), site.logFile, port, filepath.Join(dir, "access.log"), siteFor(p, "refresh_interval 1m")))
	t.Cleanup(func() { _ = caddy.Stop() })
	var bodies []string
	b := newBrowser(t)
	resp := signIn(t, site, b, "/members/a")
	bodies = append(bodies, resp.body)

	// Failing sign-ins print their error message.
	bodies = append(bodies, b.get(site.base+"/callback?state=forged&code=stolen-code-123").body)
	p.set(func(p *testProvider) {
		p.tokenEndpoint = func(w http.ResponseWriter, r *http.Request) {
			_ = r.ParseForm()
			keep(r.PostForm.Get("code"))
			writeJSONStatus(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client", "error_description": "secret " + testClientSecret + " is wrong"})
		}
	})
	failing := newBrowser(t)
	r2, _ := failing.navigate(site.base + "/members/x")
	bodies = append(bodies, r2.body)
	p.set(func(p *testProvider) { p.tokenEndpoint = nil })

	moveClock(t, 2*time.Minute)
	bodies = append(bodies, b.get(site.base+"/premium/a").body) // userinfo refresh
	lt := p.logoutToken(nil)
	keep(lt)
	bodies = append(bodies, b.postForm(site.base+"/backchannel-logout", url.Values{"logout_token": {lt}}, "").body)
	p.endSession()
	signIn(t, site, b, "/members/a")
	bodies = append(bodies, b.postForm(site.base+"/sign-out", nil, site.base).body)

	p.set(func(p *testProvider) {
		for token := range p.accessTokens {
			keep(token)
		}
	})
	u, _ := url.Parse(site.base)
	for _, c := range b.jar.Cookies(u) {
		keep(c.Value)
	}
	access, _ := os.ReadFile(filepath.Join(dir, "access.log"))
	logs := site.logs() + string(access)
	if !strings.Contains(logs, "customer signed in") || !strings.Contains(logs, `"uri":"/callback`) {
		t.Fatal("the run logged nothing; the check would prove nothing")
	}
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			for _, line := range strings.Split(logs, "\n") {
				if strings.Contains(line, s) {
					t.Errorf("a secret (%.6s…) is in the logs: %s", s, line)
				}
			}
		}
		for _, body := range bodies {
			if strings.Contains(body, s) {
				t.Errorf("a secret is in a response: %.12s… in %q", s, body)
			}
		}
	}
}

// TestSecretsStayPlaceholdersInAdaptedConfig: `caddy adapt` output is often
// stored or shared; a secret given as {env.*} or {file.*} must stay a
// placeholder there.
func TestSecretsStayPlaceholdersInAdaptedConfig(t *testing.T) {
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(testClientSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"{env.PLIRO_TEST_SECRET}", "{file." + secretFile + "}"} {
		cfg := fmt.Sprintf(`localhost {
	pliro {
		issuer https://news.plirotest.page
		client_id news
		client_secret %s
		store redis 127.0.0.1:6379 {
			password %s
		}
	}
}`, secret, secret)
		js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cfg), nil)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(js), testClientSecret) || !strings.Contains(string(js), secret) {
			t.Errorf("adapted config for %s: %s", secret, js)
		}
	}
}
