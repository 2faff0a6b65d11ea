package pliro

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// eventRecorder is an events handler for the tests: it keeps every event
// the module emits.
type eventRecorder struct{}

var recorded struct {
	sync.Mutex
	events []caddy.Event
}

func init() { caddy.RegisterModule(eventRecorder{}) }

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.pliro_test_recorder", New: func() caddy.Module { return new(eventRecorder) }}
}

func (*eventRecorder) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	return nil
}

func (*eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	recorded.Lock()
	defer recorded.Unlock()
	recorded.events = append(recorded.events, e)
	return nil
}

func recordedEvents(name string) []caddy.Event {
	recorded.Lock()
	defer recorded.Unlock()
	var out []caddy.Event
	for _, e := range recorded.events {
		if e.Name() == name {
			out = append(out, e)
		}
	}
	return out
}

// observedSite runs the module with the admin API and the events app on.
func observedSite(t *testing.T, p *testProvider) (site *testSite, admin string) {
	t.Helper()
	port, adminPort := freePort(t), freePort(t)
	dir := t.TempDir()
	loadCaddyfile(t, fmt.Sprintf(`{
	admin localhost:%d
	auto_https off
	storage file_system %s
	metrics
	events {
		on pliro_signed_in pliro_test_recorder
		on pliro_signed_out pliro_test_recorder
		on pliro_backchannel_logout pliro_test_recorder
	}
	log {
		output file %s
	}
}
http://localhost:%d {
%s
}
`, adminPort, filepath.Join(dir, "storage"), filepath.Join(dir, "caddy.log"), port, siteFor(p, "")))
	t.Cleanup(func() { _ = caddy.Stop() })
	return &testSite{t: t, port: port, base: fmt.Sprintf("http://localhost:%d", port)}, fmt.Sprintf("http://localhost:%d", adminPort)
}

// TestMetricsMoveAsFlowsRun signs a customer in, has Pliro end the session
// by back-channel, signs in again and out, and checks each counter moved,
// on the module's collectors and on Caddy's own metrics endpoint.
func TestMetricsMoveAsFlowsRun(t *testing.T) {
	p := newTestProvider(t)
	site, admin := observedSite(t, p)
	count := func() map[string]float64 {
		return map[string]float64{
			"sign_in_success":     testutil.ToFloat64(metrics.signIns.WithLabelValues(resultSuccess)),
			"sign_in_bad_state":   testutil.ToFloat64(metrics.signIns.WithLabelValues(resultBadState)),
			"sign_outs":           testutil.ToFloat64(metrics.signOuts),
			"backchannel_success": testutil.ToFloat64(metrics.backchannel.WithLabelValues(resultSuccess)),
			"backchannel_invalid": testutil.ToFloat64(metrics.backchannel.WithLabelValues(resultInvalidToken)),
			"userinfo_success":    testutil.ToFloat64(metrics.userinfo.WithLabelValues(resultSuccess)),
			"token_calls":         float64(testutil.CollectAndCount(metrics.providerDuration)),
		}
	}
	before := count()

	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	b.get(site.base + "/callback?state=forged&code=x") // a bad callback
	form := url.Values{"logout_token": {p.logoutToken(nil)}}
	b.postForm(site.base+"/backchannel-logout", form, "")
	b.postForm(site.base+"/backchannel-logout", url.Values{"logout_token": {"junk"}}, "")
	p.endSession()
	signIn(t, site, b, "/premium/a")
	b.postForm(site.base+"/sign-out", nil, site.base)

	after := count()
	for name, delta := range map[string]float64{
		"sign_in_success": 2, "sign_in_bad_state": 1, "sign_outs": 1,
		"backchannel_success": 1, "backchannel_invalid": 1,
	} {
		if got := after[name] - before[name]; got != delta {
			t.Errorf("%s moved by %v, want %v", name, got, delta)
		}
	}
	if after["token_calls"] == 0 {
		t.Error("no provider latency observed")
	}

	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{
		"caddy_pliro_sign_ins_total", "caddy_pliro_sign_outs_total", "caddy_pliro_backchannel_logouts_total",
		"caddy_pliro_sessions_active", "caddy_pliro_provider_request_duration_seconds_bucket",
	} {
		if !strings.Contains(string(body), name) {
			t.Errorf("Caddy's metrics endpoint lacks %s", name)
		}
	}
	if strings.Contains(string(body), testSubject) {
		t.Error("a customer ID is a metric label")
	}
}

func TestEventsAreEmitted(t *testing.T) {
	p := newTestProvider(t)
	site, _ := observedSite(t, p)
	signedIn, signedOut, notified := len(recordedEvents(eventSignedIn)), len(recordedEvents(eventSignedOut)), len(recordedEvents(eventBackchannelLogout))

	b := newBrowser(t)
	signIn(t, site, b, "/members/a")
	b.postForm(site.base+"/sign-out", nil, site.base)
	signIn(t, site, b, "/members/a")
	b.postForm(site.base+"/backchannel-logout", url.Values{"logout_token": {p.logoutToken(nil)}}, "")

	if got := recordedEvents(eventSignedIn); len(got)-signedIn != 2 || got[len(got)-1].Data["customer_id"] != testSubject {
		t.Errorf("pliro_signed_in events: %v", got)
	}
	if got := recordedEvents(eventSignedOut); len(got)-signedOut != 1 || got[len(got)-1].Data["sid"] != testProviderSID {
		t.Errorf("pliro_signed_out events: %v", got)
	}
	if got := recordedEvents(eventBackchannelLogout); len(got)-notified != 1 || got[len(got)-1].Data["sessions_ended"] != 1 {
		t.Errorf("pliro_backchannel_logout events: %v", got)
	}
}

// TestAdminEndpoint: a support desk counts sessions and ends a customer's
// sessions through Caddy's admin API.
func TestAdminEndpoint(t *testing.T) {
	p := newTestProvider(t)
	site, admin := observedSite(t, p)
	laptop, phone := newBrowser(t), newBrowser(t)
	signIn(t, site, laptop, "/members/a")
	signIn(t, site, phone, "/members/a")

	var status []storeStatus
	getJSON(t, admin+"/pliro/sessions", &status)
	if len(status) != 1 || status[0].Sessions != 2 || status[0].Store != "memory" || status[0].ClientID != testClientID {
		t.Fatalf("GET /pliro/sessions: %+v", status)
	}

	req, _ := http.NewRequest(http.MethodDelete, admin+"/pliro/sessions?sub="+testSubject, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var ended map[string]int
	_ = json.NewDecoder(resp.Body).Decode(&ended)
	resp.Body.Close()
	if ended["ended"] != 2 {
		t.Fatalf("DELETE ended %v", ended)
	}
	if got := laptop.get(site.base + "/").body; got != "public: []" {
		t.Fatalf("laptop still signed in: %q", got)
	}

	req, _ = http.NewRequest(http.MethodDelete, admin+"/pliro/sessions", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("DELETE without sub or sid: %v %v", resp.StatusCode, err)
	}
}

func getJSON(t *testing.T, u string, v any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", u, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}
