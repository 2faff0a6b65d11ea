package pliro

// Benchmarks of the module's hot paths, and its scale figures (issue #6).
// bench/run measures the same paths end to end, through Caddy and wrk,
// side by side with plain Caddy; these isolate the module's own work.
//
//	go test -run '^$' -bench . -benchmem                       hot paths
//	go test -run '^$' -bench BackchannelLogout -cpu 1 -benchmem   notifications per second on one core
//	go test -run '^TestScale$' -pliro.scale -v -timeout 30m    memory per session at 100k and 1M
//	                                                           sessions, request cost at 1 and 1M
//	                                                           sessions, logout of a customer with
//	                                                           many sessions (needs ~6 GB of RAM)
//
// The handler is the real one, provisioned in a running Caddy (for its
// storage and events app) with Pliro's key pinned, so no benchmark touches
// the network: the token endpoint of the callback benchmark is an in-memory
// RoundTripper.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
)

var scaleFlag = flag.Bool("pliro.scale", false, "run TestScale: memory per session at 100k and 1M sessions, request cost at 1M sessions, logout fan-out (slow, ~6 GB RAM)")

// benchIssuer is never contacted: the key is pinned and the token endpoint
// is served from memory.
const benchIssuer = "https://news.plirotest.page"

// benchCaddy is a running Caddy (for the handler's storage and events app;
// its logs are discarded, but the handler still builds its log entries)
// and Pliro's signing key, pinned in the handlers provisioned in it.
type benchCaddy struct {
	ctx     caddy.Context
	key     *ecdsa.PrivateKey
	kid     string
	pemFile string
}

func startBenchCaddy(tb testing.TB) *benchCaddy {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		tb.Fatal(err)
	}
	dir := tb.TempDir()
	pemFile := filepath.Join(dir, "pliro.pem")
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg := fmt.Sprintf(`{
		"admin": {"disabled": true},
		"storage": {"module": "file_system", "root": %q},
		"logging": {"logs": {"default": {"writer": {"output": "discard"}, "level": "INFO"}}}
	}`, filepath.Join(dir, "storage"))
	if err := caddy.Load([]byte(cfg), true); err != nil {
		tb.Fatalf("starting Caddy: %v", err)
	}
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	tb.Cleanup(func() {
		cancel()
		_ = caddy.Stop()
	})
	return &benchCaddy{ctx: ctx, key: key, kid: "bench-key", pemFile: pemFile}
}

// benchEnv is a provisioned pliro handler and the pliro_require that
// protects /members/*.
type benchEnv struct {
	*benchCaddy
	h       *Handler
	require *Require
}

// handler provisions and validates a pliro handler as Caddy does.
func (c *benchCaddy) handler(tb testing.TB, configure func(h *Handler)) *benchEnv {
	tb.Helper()
	h := &Handler{
		Issuer:        benchIssuer,
		ClientID:      "news-web",
		ClientSecret:  "bench-secret",
		PublicKeyFile: c.pemFile,
	}
	if configure != nil {
		configure(h)
	}
	tb.Cleanup(func() { _ = h.Cleanup() })
	if err := h.Provision(c.ctx); err != nil {
		tb.Fatalf("provisioning: %v", err)
	}
	if err := h.Validate(); err != nil {
		tb.Fatalf("validating: %v", err)
	}
	rq := &Require{}
	if err := rq.Provision(c.ctx); err != nil {
		tb.Fatal(err)
	}
	return &benchEnv{benchCaddy: c, h: h, require: rq}
}

// benchClaims are the claims of a realistic customer, as Pliro's ID token
// carries them.
func benchClaims(i int) map[string]any {
	return map[string]any{
		"sub":        fmt.Sprintf("cus_%022d", i),
		"sid":        fmt.Sprintf("sid_%039d", i), // 43 characters, as the stand-in's
		"email":      fmt.Sprintf("reader%d@example.com", i),
		"name":       fmt.Sprintf("Reader Number %d", i),
		"plan":       "premium",
		"plan_slugs": []string{"premium"},
	}
}

// idToken signs an ID token like the stand-in's (ES256, kid, Pliro's
// claims, nonce, at_hash): about 800 bytes.
func (e *benchEnv) idToken(i int, nonce, accessToken string) string {
	t := now()
	claims := benchClaims(i)
	sum := sha256.Sum256([]byte(accessToken))
	claims["iss"] = benchIssuer
	claims["aud"] = e.h.ClientID
	claims["iat"] = t.Unix()
	claims["exp"] = t.Add(2 * time.Minute).Unix()
	claims["auth_time"] = t.Unix()
	claims["nonce"] = nonce
	claims["at_hash"] = base64.RawURLEncoding.EncodeToString(sum[:16])
	return signES256With(e.key, map[string]any{"alg": "ES256", "typ": "JWT", "kid": e.kid}, claims)
}

// logoutToken signs a back-channel logout token for a sid and/or subject.
func (e *benchEnv) logoutToken(sub, sid string) string {
	t := now()
	claims := map[string]any{
		"iss":    benchIssuer,
		"aud":    e.h.ClientID,
		"iat":    t.Unix(),
		"exp":    t.Add(2 * time.Minute).Unix(),
		"jti":    randomToken(16),
		"events": map[string]any{backchannelLogoutEvent: map[string]any{}},
	}
	if sub != "" {
		claims["sub"] = sub
	}
	if sid != "" {
		claims["sid"] = sid
	}
	return signES256With(e.key, map[string]any{"alg": "ES256", "typ": "logout+jwt", "kid": e.kid}, claims)
}

// benchSession is a session as the callback builds it: claims parsed from
// the ID token's JSON (so each string is its own allocation, as in
// production), a ~800-byte ID token and a 43-byte access token.
func benchSession(i int, idToken string) *Session {
	payload, _ := json.Marshal(benchClaims(i))
	c, err := parseCustomerClaims(payload)
	if err != nil {
		panic(err)
	}
	s := c.session()
	t := now()
	s.IDToken = idToken
	s.AccessToken = randomToken(32)
	s.Created, s.LastSeen, s.ClaimsAt, s.ReauthAt = t, t, t, t
	return s
}

// signIn stores a session for customer i and returns its cookie value.
func (e *benchEnv) signIn(tb testing.TB, store Store, i int, idToken string) string {
	tb.Helper()
	cookie, key := newSessionID()
	s := benchSession(i, idToken)
	if err := store.Save(context.Background(), key, s, e.h.deadline(s)); err != nil {
		tb.Fatal(err)
	}
	return cookie
}

// discardWriter is a ResponseWriter that keeps only the status and headers.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.header }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *discardWriter) WriteHeader(status int)      { w.status = status }
func (w *discardWriter) reset() {
	clear(w.header)
	w.status = http.StatusOK
}

// asCaddyServes gives r the context Caddy's server gives every request: a
// fresh replacer with the HTTP placeholders, the vars, the original
// request.
func asCaddyServes(r *http.Request) *http.Request {
	return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), nil, nil)
}

// respond stands for the site's respond/file_server: it reads the customer
// from the placeholder, as the benchmark site's body does.
var respond = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	_, _ = io.WriteString(w, repl.ReplaceKnown("Hello, {http.auth.user.id}", ""))
	return nil
})

// protected is the route of /members/*: pliro_require, then respond.
func (e *benchEnv) protected() caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return e.require.ServeHTTP(w, r, respond)
	})
}

// serveOnce runs the handler chain on a fresh copy of base, as Caddy would
// for one request.
func serveOnce(tb testing.TB, h caddyhttp.MiddlewareHandler, w *discardWriter, base *http.Request, next caddyhttp.Handler) {
	w.reset()
	if err := h.ServeHTTP(w, asCaddyServes(base), next); err != nil {
		tb.Fatalf("%s %s: %v", base.Method, base.URL, err)
	}
}

// plainHandler is the reference: no module, the same respond.
type plainHandler struct{}

func (plainHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return next.ServeHTTP(w, r)
}

// requestCase is one request of bench/run's variants.
type requestCase struct {
	name   string
	h      caddyhttp.MiddlewareHandler
	req    *http.Request
	next   caddyhttp.Handler
	status int
}

// requestCases are bench/run's requests, for this handler and a signed-in
// customer's cookie.
func (e *benchEnv) requestCases(cookie string) []requestCase {
	signedIn, _ := http.NewRequest(http.MethodGet, "http://localhost/members/article", nil)
	signedIn.Header.Set("Cookie", e.h.CookieName+"="+cookie)
	public, _ := http.NewRequest(http.MethodGet, "http://localhost/", nil)
	nav, _ := http.NewRequest(http.MethodGet, "http://localhost/members/article", nil)
	nav.Header.Set("Accept", "text/html")
	return []requestCase{
		{"plain", plainHandler{}, signedIn, respond, http.StatusOK},
		{"signed_in", e.h, signedIn, e.protected(), http.StatusOK},
		{"anonymous_public", e.h, public, respond, http.StatusOK},
		{"redirect_to_sign_in", e.h, nav, e.protected(), http.StatusFound},
	}
}

// run benchmarks one request case.
func (c requestCase) run(b *testing.B) {
	w := &discardWriter{header: http.Header{}}
	serveOnce(b, c.h, w, c.req, c.next)
	if w.status != c.status {
		b.Fatalf("status %d, want %d", w.status, c.status)
	}
	b.ReportAllocs()
	for b.Loop() {
		serveOnce(b, c.h, w, c.req, c.next)
	}
}

// BenchmarkRequest is the module's cost per request: signed_in is the
// session cookie to the identity placeholders (pliro, then pliro_require,
// then a respond that reads {http.auth.user.id}); anonymous_public is a
// visitor without a session on a public route; redirect_to_sign_in is an
// anonymous navigation to /members/*, sent to Pliro. plain is the same
// request without the module (the context Caddy makes for each request,
// and the respond): the module's cost is the difference.
// signed_in_identity_headers adds identity_headers (X-Pliro-*).
func BenchmarkRequest(b *testing.B) {
	c := startBenchCaddy(b)
	e := c.handler(b, nil)
	cookie := e.signIn(b, e.h.store, 1, e.idToken(1, randomToken(32), randomToken(32)))
	cases := e.requestCases(cookie)

	withHeaders := c.handler(b, func(h *Handler) {
		h.IdentityHeaderPrefix = defaultHeaderPrefix
		h.CookieName = "pliro_headers" // its own shared state
	})
	cookie = withHeaders.signIn(b, withHeaders.h.store, 2, e.idToken(2, randomToken(32), randomToken(32)))
	headers := withHeaders.requestCases(cookie)[1]
	headers.name = "signed_in_identity_headers"

	for _, rc := range append(cases, headers) {
		b.Run(rc.name, rc.run)
	}
}

// BenchmarkBackchannelLogout is one back-channel logout notification, as
// Pliro sends it: form parsing, the logout token's signature (ES256) and
// claims, the replay cache, and the end of the customer's session. Each
// notification names another signed-in customer's sid. Per core: run it
// with -cpu 1 (the parallel case shows the whole machine).
func BenchmarkBackchannelLogout(b *testing.B) {
	c := startBenchCaddy(b)
	e := c.handler(b, nil)
	idToken := e.idToken(0, randomToken(32), randomToken(32))
	customer := 0
	// notifications signs in n customers and returns the requests that sign
	// them out; making them is not measured.
	notifications := func(b *testing.B, n int) []*http.Request {
		b.StopTimer()
		defer b.StartTimer()
		reqs := make([]*http.Request, n)
		for i := range reqs {
			customer++
			e.signIn(b, e.h.store, customer, idToken)
			claims := benchClaims(customer)
			body := "logout_token=" + e.logoutToken(claims["sub"].(string), claims["sid"].(string))
			r, _ := http.NewRequest(http.MethodPost, "http://localhost"+e.h.BackchannelLogoutPath, strings.NewReader(body))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			reqs[i] = asCaddyServes(r)
		}
		return reqs
	}
	check := func(b *testing.B, w *discardWriter) {
		if w.status != http.StatusOK {
			b.Fatalf("notification answered %d", w.status)
		}
	}
	b.Run("sequential", func(b *testing.B) {
		reqs := notifications(b, b.N)
		w := &discardWriter{header: http.Header{}}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			w.reset()
			if err := e.h.ServeHTTP(w, reqs[i], respond); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		check(b, w)
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "notifications/s")
	})
	b.Run("parallel", func(b *testing.B) {
		reqs := notifications(b, b.N)
		var next atomic.Int64
		var failed atomic.Int64
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			w := &discardWriter{header: http.Header{}}
			for pb.Next() {
				w.reset()
				if err := e.h.ServeHTTP(w, reqs[next.Add(1)-1], respond); err != nil || w.status != http.StatusOK {
					failed.Add(1)
				}
			}
		})
		b.StopTimer()
		if n := failed.Load(); n > 0 {
			b.Fatalf("%d notifications failed", n)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "notifications/s")
	})
}

// fakeTokenEndpoint answers the token request from memory: the callback's
// own work is measured, not the round trip to Pliro.
type fakeTokenEndpoint struct {
	bodies [][]byte
	next   int
}

func (f *fakeTokenEndpoint) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
	body := f.bodies[f.next]
	f.next++
	return &http.Response{
		StatusCode: http.StatusOK,
		Status:     "200 OK",
		Proto:      "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:  http.Header{"Content-Type": {"application/json"}, "Cache-Control": {"no-store"}},
		Body:    io.NopCloser(bytes.NewReader(body)),
		Request: req,
	}, nil
}

// BenchmarkCallback is the callback's own work: the sign-in attempt cookie
// (AES-GCM) and state check, the replay cache, the token request built and
// its response read (served from memory: no round trip to Pliro), the ID
// token verified (ES256 signature, iss, aud, exp, iat, nonce, at_hash), the
// previous session ended, the new one stored, the cookie set.
func BenchmarkCallback(b *testing.B) {
	c := startBenchCaddy(b)
	e := c.handler(b, nil)
	token := &fakeTokenEndpoint{}
	e.h.provider.client.Transport = token
	customer := 0

	b.ReportAllocs()
	for b.Loop() {
		// A sign-in started on a protected page, and Pliro's answer: not
		// measured.
		b.StopTimer()
		customer++
		w := &discardWriter{header: http.Header{}}
		nav, _ := http.NewRequest(http.MethodGet, "http://localhost/members/article", nil)
		nav.Header.Set("Accept", "text/html")
		serveOnce(b, e.h, w, nav, e.protected())
		authorize, err := url.Parse(w.header.Get("Location"))
		if err != nil || w.status != http.StatusFound {
			b.Fatalf("sign-in start: %d %q", w.status, w.header.Get("Location"))
		}
		q := authorize.Query()
		access := randomToken(32)
		resp, _ := json.Marshal(map[string]any{
			"access_token": access,
			"token_type":   "Bearer",
			"expires_in":   7200,
			"id_token":     e.idToken(customer, q.Get("nonce"), access),
		})
		token.bodies = append(token.bodies, resp)
		cb, _ := http.NewRequest(http.MethodGet, "http://localhost/callback?code="+randomToken(32)+"&state="+url.QueryEscape(q.Get("state")), nil)
		for _, set := range w.header.Values("Set-Cookie") {
			if ck, err := http.ParseSetCookie(set); err == nil {
				cb.AddCookie(&http.Cookie{Name: ck.Name, Value: ck.Value})
			}
		}
		cb = asCaddyServes(cb)
		w.reset()
		b.StartTimer()

		if err := e.h.ServeHTTP(w, cb, respond); err != nil {
			b.Fatalf("callback: %v", err)
		}
		if w.status != http.StatusSeeOther {
			b.Fatalf("callback answered %d", w.status)
		}
	}
}

// TestScale measures what the scale targets are about; it runs only
// with -pliro.scale (minutes, and ~6 GB of memory):
//   - resident memory per session with 100k and 1M sessions in the memory
//     store (target: at most 1.5 KB);
//   - the cost of a signed-in request with 1 and with 1M sessions (it must
//     not grow);
//   - a back-channel logout of a customer with many sessions: its cost grows
//     with that customer's sessions only, not with the store's;
//   - how long the memory store's periodic sweep and snapshot hold its lock
//     with 1M sessions.
func TestScale(t *testing.T) {
	if !*scaleFlag {
		t.Skip("scale measurements run with -pliro.scale")
	}
	c := startBenchCaddy(t)
	e := c.handler(t, nil)
	template := e.idToken(0, randomToken(32), randomToken(32))
	t.Logf("ID token: %d bytes; access token: %d bytes", len(template), len(randomToken(32)))

	// fill adds n sessions to m (each with its own ~800-byte ID token) and
	// returns a sample of their cookies.
	fill := func(m *memoryStore, from, n int) []string {
		var sample []string
		for i := from; i < from+n; i++ {
			cookie := e.signIn(t, m, i, uniqueToken(template, i))
			if len(sample) < 4096 && i%max(1, n/4096) == 0 {
				sample = append(sample, cookie)
			}
		}
		return sample
	}

	var store *memoryStore
	var sample []string
	t.Run("memory per session", func(t *testing.T) {
		for _, n := range []int{100_000, 1_000_000} {
			m := newMemoryStore()
			before := heapNow()
			sample = fill(m, 0, n)
			after := heapNow()
			perSession := func(a, b uint64) float64 { return float64(int64(b)-int64(a)) / float64(n) }
			t.Logf("%7d sessions: %.0f B/session live heap (HeapAlloc), %.0f B/session in use (HeapInuse), %.0f B/session resident (RSS)",
				n, perSession(before.alloc, after.alloc), perSession(before.inuse, after.inuse), perSession(before.rss, after.rss))
			if store != nil {
				_ = store.Destruct()
			}
			store = m
		}
		s := benchSession(1, uniqueToken(template, 1))
		payload := len(s.Subject) + len(s.ProviderSID) + len(s.Email) + len(s.Name) + len(s.Plan) + len(s.PlanSlugs[0]) + len(s.IDToken) + len(s.AccessToken) + 43 // + store key
		t.Logf("of which the strings themselves (tokens, claims, store key): %d B/session; the Session struct: %d B", payload, unsafe.Sizeof(*s))

		// The ID token is most of a session: with a larger one (a longer
		// issuer, more claims), memory grows by as much.
		long := padToken(template, 900)
		m := newMemoryStore()
		before := heapNow()
		for i := range 100_000 {
			e.signIn(t, m, i, uniqueToken(long, i))
		}
		after := heapNow()
		t.Logf(" 100000 sessions with a %d-byte ID token: %.0f B/session live heap, %.0f B/session resident",
			len(long), float64(after.alloc-before.alloc)/100_000, float64(int64(after.rss)-int64(before.rss))/100_000)
		_ = m.Destruct()
	})
	defer func() {
		if store != nil { // nil when -run picked other subtests
			_ = store.Destruct()
		}
	}()

	// With end_provider_session off no ID token is kept (nothing to send
	// as id_token_hint).
	t.Run("memory per session without the ID token", func(t *testing.T) {
		const n = 100_000
		m := newMemoryStore()
		defer func() { _ = m.Destruct() }()
		before := heapNow()
		for i := range n {
			e.signIn(t, m, i, "")
		}
		after := heapNow()
		t.Logf("%7d sessions without the ID token (end_provider_session off): %.0f B/session live heap, %.0f B/session resident",
			n, float64(after.alloc-before.alloc)/n, float64(int64(after.rss)-int64(before.rss))/n)
	})

	t.Run("request cost", func(t *testing.T) {
		one := newMemoryStore()
		defer func() { _ = one.Destruct() }()
		oneCookie := e.signIn(t, one, 0, uniqueToken(template, 0))
		measure := func(name string, s *memoryStore, cookies []string) {
			e.h.store = s
			var next atomic.Int64
			runtime.GC() // no collection of the previous measurement's garbage in this one
			res := testing.Benchmark(func(b *testing.B) {
				w := &discardWriter{header: http.Header{}}
				reqs := make([]*http.Request, len(cookies))
				for i, ck := range cookies {
					reqs[i], _ = http.NewRequest(http.MethodGet, "http://localhost/members/article", nil)
					reqs[i].Header.Set("Cookie", e.h.CookieName+"="+ck)
				}
				b.ReportAllocs()
				for b.Loop() {
					r := reqs[int(next.Add(1))%len(reqs)]
					serveOnce(b, e.h, w, r, e.protected())
					if w.status != http.StatusOK {
						b.Fatalf("status %d", w.status)
					}
				}
			})
			t.Logf("%-46s %6d ns/request, %5d B/request, %3d allocs/request", name, res.NsPerOp(), res.AllocedBytesPerOp(), res.AllocsPerOp())
		}
		measure("signed-in request, 1 session in the store:", one, []string{oneCookie})
		measure("signed-in request, 1M sessions, same customer:", store, sample[:1])
		measure("signed-in request, 1M sessions, 4096 customers:", store, sample)
	})

	t.Run("back-channel logout of a customer with many sessions", func(t *testing.T) {
		small := newMemoryStore()
		defer func() { _ = small.Destruct() }()
		for _, others := range []struct {
			name  string
			store *memoryStore
		}{{"store otherwise empty", small}, {"store with 1M other sessions", store}} {
			e.h.store = others.store
			for _, k := range []int{1, 100, 10_000} {
				const reps = 15
				var times []time.Duration
				for rep := range reps {
					sub := fmt.Sprintf("cus_many_%d_%d", k, rep)
					for i := range k {
						cookie, key := newSessionID()
						_ = cookie
						s := benchSession(2_000_000+i, uniqueToken(template, i))
						s.Subject = sub
						s.ProviderSID = fmt.Sprintf("sid_%s_%d", sub, i)
						if err := others.store.Save(context.Background(), key, s, e.h.deadline(s)); err != nil {
							t.Fatal(err)
						}
					}
					r, _ := http.NewRequest(http.MethodPost, "http://localhost"+e.h.BackchannelLogoutPath,
						strings.NewReader("logout_token="+e.logoutToken(sub, "")))
					r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
					w := &discardWriter{header: http.Header{}}
					start := time.Now()
					if err := e.h.ServeHTTP(w, asCaddyServes(r), respond); err != nil || w.status != http.StatusOK {
						t.Fatalf("logout: %d %v", w.status, err)
					}
					times = append(times, time.Since(start))
				}
				slices.Sort(times)
				t.Logf("%-30s customer with %6d sessions: logout by sub takes %9s (median of %d)", others.name+",", k, times[reps/2].Round(time.Microsecond), reps)
			}
		}
	})

	t.Run("housekeeping with 1M sessions", func(t *testing.T) {
		// The garbage collector marks every session on each cycle; on a
		// busy site a cycle starts each time the heap grows by GOGC%.
		var gcCPU time.Duration
		for range 3 {
			start := time.Now()
			runtime.GC()
			gcCPU += time.Since(start)
		}
		t.Logf("a full garbage collection with 1M sessions takes %s (wall time, both cores)", (gcCPU / 3).Round(time.Millisecond))

		start := time.Now()
		store.sweep()
		t.Logf("sweep (nothing expired) holds the store's write lock for %s", time.Since(start).Round(time.Millisecond))
		store.persist = &persistence{storage: discardStorage{}, key: "sessions.json", logger: e.h.logger}
		defer func() { store.persist = nil }()
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		start = time.Now()
		if err := store.save(); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&ms1)
		t.Logf("snapshot to storage takes %s and allocates %.0f MB (%d B/session)", time.Since(start).Round(time.Millisecond),
			float64(ms1.TotalAlloc-ms0.TotalAlloc)/1e6, (ms1.TotalAlloc-ms0.TotalAlloc)/uint64(store.count()))
	})
}

// padToken lengthens a token's signature segment to size bytes in all.
func padToken(token string, size int) string {
	if len(token) >= size {
		return token
	}
	return token + strings.Repeat("A", size-len(token))
}

// uniqueToken is template with its signature replaced by bytes of its own:
// the same length, and a string of its own, as each session has.
func uniqueToken(template string, i int) string {
	dot := strings.LastIndexByte(template, '.')
	sig := make([]byte, 64)
	_, _ = rand.Read(sig)
	copy(sig, strconv.Itoa(i))
	return template[:dot+1] + base64.RawURLEncoding.EncodeToString(sig) + template[min(len(template), dot+1+86):]
}

type heapFigures struct{ alloc, inuse, rss uint64 }

// heapNow collects the garbage and returns the live heap, the heap spans
// in use, and the process's resident memory.
func heapNow() heapFigures {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return heapFigures{alloc: ms.HeapAlloc, inuse: ms.HeapInuse, rss: residentBytes()}
}

// residentBytes is the process's resident set size (Linux), or 0.
func residentBytes() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// discardStorage is a certmagic.Storage that stores nothing, for timing the
// memory store's snapshot.
type discardStorage struct{}

func (discardStorage) Lock(context.Context, string) error                   { return nil }
func (discardStorage) Unlock(context.Context, string) error                 { return nil }
func (discardStorage) Store(context.Context, string, []byte) error          { return nil }
func (discardStorage) Load(context.Context, string) ([]byte, error)         { return nil, os.ErrNotExist }
func (discardStorage) Delete(context.Context, string) error                 { return nil }
func (discardStorage) Exists(context.Context, string) bool                  { return false }
func (discardStorage) List(context.Context, string, bool) ([]string, error) { return nil, nil }
func (discardStorage) Stat(context.Context, string) (certmagic.KeyInfo, error) {
	return certmagic.KeyInfo{}, os.ErrNotExist
}
