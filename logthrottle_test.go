package pliro

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Redis down under a busy site: every request with a session cookie fails
// to load it. The log gets one warning per storeWarningInterval, which
// says how many it stands for, not one line per request.
func TestStoreOutageWarnsOncePerInterval(t *testing.T) {
	h, session := unitIdentityHandler(t, "")
	h.store = unitFailingStore{}
	core, logs := observer.New(zap.WarnLevel)
	h.logger = zap.New(core)

	request := func() {
		t.Helper()
		r, _ := unitCaddyRequest(http.MethodGet, "/article/7")
		r.AddCookie(session)
		var up unitUpstream
		if err := h.ServeHTTP(httptest.NewRecorder(), r, up.handler()); err != nil || !up.called {
			t.Fatalf("public page not served while the store is down: %v", err)
		}
	}
	for range 1000 {
		request()
	}
	if n := logs.FilterMessage("loading session").Len(); n != 1 {
		t.Fatalf("1,000 failing requests wrote %d warnings, want 1", n)
	}

	moveClock(t, storeWarningInterval+time.Second)
	request()
	warnings := logs.FilterMessage("loading session").All()
	if len(warnings) != 2 {
		t.Fatalf("after the interval: %d warnings, want 2", len(warnings))
	}
	if held := warnings[1].ContextMap()["store_warnings_held_back"]; held != int64(999) {
		t.Errorf("second warning says %v held back, want 999", held)
	}
	if warnings[1].ContextMap()["error"] != errUnitStoreDown.Error() {
		t.Errorf("warning without the error: %v", warnings[1].ContextMap())
	}
}
