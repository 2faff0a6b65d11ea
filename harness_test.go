package pliro

import (
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// testSite is a real Caddy, running in this process with a Caddyfile, on a
// free loopback port. Loading a second site in the same test is a config
// reload, as `caddy reload` does.
type testSite struct {
	t       *testing.T
	base    string // http://localhost:PORT
	port    int
	logFile string
}

// startCaddy runs the Caddyfile's site block (given without its address)
// under http://localhost:PORT with the module's directives available.
func startCaddy(t *testing.T, siteBody string) *testSite {
	t.Helper()
	s := &testSite{t: t, port: freePort(t), logFile: filepath.Join(t.TempDir(), "caddy.log")}
	s.base = fmt.Sprintf("http://localhost:%d", s.port)
	s.load(siteBody)
	t.Cleanup(func() { _ = caddy.Stop() })
	return s
}

// startCaddySites runs several sites in one Caddy, each on its own port;
// with the same config they act as separate Caddy instances behind a load
// balancer (cookies are shared across ports of localhost, as across the
// instances of one site).
func startCaddySites(t *testing.T, ports []int, bodies ...string) []*testSite {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	var sites []*testSite
	var blocks strings.Builder
	for i, body := range bodies {
		s := &testSite{t: t, port: ports[i], logFile: logFile}
		s.base = fmt.Sprintf("http://localhost:%d", s.port)
		fmt.Fprintf(&blocks, "http://localhost:%d {\n%s\n}\n", s.port, body)
		sites = append(sites, s)
	}
	cfg := fmt.Sprintf(`{
	admin off
	auto_https off
	storage file_system %s
	log {
		output file %s
		level DEBUG
	}
}
%s`, filepath.Join(filepath.Dir(logFile), "storage"), logFile, blocks.String())
	loadCaddyfile(t, cfg)
	t.Cleanup(func() { _ = caddy.Stop() })
	return sites
}

// restart stops Caddy completely (every module cleaned up, as at process
// exit) and starts it again with the same storage.
func (s *testSite) restart(siteBody string) {
	s.t.Helper()
	if err := caddy.Stop(); err != nil {
		s.t.Fatalf("stopping Caddy: %v", err)
	}
	s.load(siteBody)
}

// load (re)loads the site with a new body.
func (s *testSite) load(siteBody string) {
	s.t.Helper()
	cfg := fmt.Sprintf(`{
	admin off
	auto_https off
	http_port %d
	storage file_system %s
	log {
		output file %s
		level DEBUG
	}
}
http://localhost:%d {
%s
}
`, s.port, filepath.Join(filepath.Dir(s.logFile), "storage"), s.logFile, s.port, siteBody)
	loadCaddyfile(s.t, cfg)
}

// loadCaddyfile adapts a whole Caddyfile and loads it into this process's
// Caddy.
func loadCaddyfile(t *testing.T, cfg string) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	js, warnings, err := adapter.Adapt([]byte(cfg), nil)
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, cfg)
	}
	for _, w := range warnings {
		if !strings.Contains(w.Message, "not formatted") {
			t.Logf("caddyfile warning: %s", w)
		}
	}
	if err := caddy.Load(js, true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
}

// logs returns everything Caddy logged so far.
func (s *testSite) logs() string {
	b, _ := os.ReadFile(s.logFile)
	return string(b)
}

// freePort returns a loopback port that nothing listens on, for a server
// the test starts afterwards. The port is free when freePort returns, not
// reserved, so two races are kept out: it is below Linux's ephemeral range
// (ip_local_port_range), so no outgoing connection of this or another
// process (the kernel picks their local ports from that range) takes it
// before the server binds it; and it is never handed out twice in this
// process, so a later freePort cannot return a port whose server is not
// listening yet (net.Listen on port 0 may well return the port it just
// returned).
func freePort(t testing.TB) int {
	t.Helper()
	usedPorts.Lock()
	defer usedPorts.Unlock()
	if usedPorts.m == nil {
		usedPorts.m = map[int]bool{}
	}
	lo, hi := 20000, ephemeralPortsFrom()
	for range 1000 {
		port := 0
		if hi-lo >= 1000 {
			port = lo + mathrand.IntN(hi-lo)
			if usedPorts.m[port] {
				continue
			}
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			if port == 0 {
				t.Fatal(err)
			}
			continue // in use
		}
		port = l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if usedPorts.m[port] {
			continue
		}
		usedPorts.m[port] = true
		return port
	}
	t.Fatal("no free loopback port found")
	return 0
}

// usedPorts are the ports freePort handed out.
var usedPorts struct {
	sync.Mutex
	m map[int]bool
}

// ephemeralPortsFrom is the first port of Linux's ephemeral range (32768
// by default), or 0 where it cannot be read (then freePort takes ports
// from the kernel, still never the same twice).
func ephemeralPortsFrom() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return n
}

// browser is an HTTP client with a cookie jar that behaves like a browser
// navigating: it sends Sec-Fetch-Mode: navigate and Accept: text/html, and
// follows redirects itself so the tests can see each hop.
type browser struct {
	t      *testing.T
	client *http.Client
	jar    *cookiejar.Jar
}

func newBrowser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, jar: jar, client: &http.Client{
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// response is a finished request, body read.
type response struct {
	*http.Response
	body string
}

// do sends one request without following redirects.
func (b *browser) do(req *http.Request) *response {
	b.t.Helper()
	if req.Header.Get("Sec-Fetch-Mode") == "" && req.Header.Get("Accept") == "" && req.Method == http.MethodGet {
		req.Header.Set("Sec-Fetch-Mode", "navigate")
		req.Header.Set("Sec-Fetch-Dest", "document")
		req.Header.Set("Accept", "text/html,application/xhtml+xml")
	}
	resp, err := b.client.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return &response{resp, string(body)}
}

func (b *browser) get(rawURL string) *response {
	b.t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	return b.do(req)
}

// navigate opens a URL and follows redirects (across Caddy and the
// provider), returning the final response and every URL visited.
func (b *browser) navigate(rawURL string) (*response, []string) {
	b.t.Helper()
	var visited []string
	for range 10 {
		visited = append(visited, rawURL)
		resp := b.get(rawURL)
		if resp.StatusCode < 300 || resp.StatusCode > 399 {
			return resp, visited
		}
		next, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
		if err != nil {
			b.t.Fatalf("bad Location %q: %v", resp.Header.Get("Location"), err)
		}
		rawURL = next.String()
	}
	b.t.Fatalf("too many redirects: %v", visited)
	return nil, nil
}

// postForm sends a same-origin form POST, as a page of the site would.
func (b *browser) postForm(rawURL string, form url.Values, origin string) *response {
	b.t.Helper()
	req, err := http.NewRequest(http.MethodPost, rawURL, strings.NewReader(form.Encode()))
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	return b.do(req)
}

// cookie returns the jar's cookie of that name for the URL, or "".
func (b *browser) cookie(rawURL, name string) string {
	u, _ := url.Parse(rawURL)
	for _, c := range b.jar.Cookies(u) {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}
