package pliro

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are process-wide, so counts survive config reloads, and are
// registered in each config's registry: they appear on Caddy's own metrics
// endpoint. Labels take a handful of fixed values; no customer ID ever
// becomes a label.
var metrics = struct {
	signIns          *prometheus.CounterVec
	signOuts         prometheus.Counter
	backchannel      *prometheus.CounterVec
	silentReauths    *prometheus.CounterVec
	userinfo         *prometheus.CounterVec
	sessions         prometheus.GaugeFunc
	providerDuration *prometheus.HistogramVec
}{
	signIns: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "pliro", Name: "sign_ins_total",
		Help: "Finished sign-ins (callbacks), by result.",
	}, []string{"result"}),
	signOuts: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "pliro", Name: "sign_outs_total",
		Help: "Sessions ended by the site's sign-out.",
	}),
	backchannel: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "pliro", Name: "backchannel_logouts_total",
		Help: "Back-channel logout notifications, by result.",
	}, []string{"result"}),
	silentReauths: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "pliro", Name: "silent_reauths_total",
		Help: "Silent re-authentications (prompt=none) that came back, by result.",
	}, []string{"result"}),
	userinfo: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "pliro", Name: "userinfo_refreshes_total",
		Help: "Refreshes of customer information from userinfo, by result.",
	}, []string{"result"}),
	sessions: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "pliro", Name: "sessions_active",
		Help: "Sessions held in this instance's memory stores (not counted for Redis).",
	}, countMemorySessions),
	providerDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "pliro", Name: "provider_request_duration_seconds",
		Help:    "Latency of calls to the sign-in provider, by endpoint.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"endpoint"}),
}

// The results counted. Sign-in failures are named for what failed.
const (
	resultSuccess          = "success"
	resultBadState         = "bad_state"
	resultProviderRefused  = "provider_refused"
	resultProviderDown     = "provider_unreachable"
	resultExchangeFailed   = "exchange_failed"
	resultInvalidIDToken   = "invalid_id_token"
	resultStoreError       = "store_error"
	resultInvalidToken     = "invalid_token"
	resultInvalidRequest   = "invalid_request"
	resultReplay           = "replay"
	resultLoginRequired    = "login_required"
	resultError            = "error"
	resultTokenRejected    = "token_rejected"
	resultSubjectMismatch  = "sub_mismatch"
	resultSessionEnded     = "session_ended"
	endpointDiscovery      = "discovery"
	endpointJWKS           = "jwks"
	endpointToken          = "token"
	endpointUserinfo       = "userinfo"
	eventSignedIn          = "pliro_signed_in"
	eventSignedOut         = "pliro_signed_out"
	eventBackchannelLogout = "pliro_backchannel_logout"
)

// registerMetrics adds the module's collectors to this config's registry;
// the second handler of a config finds them there already.
func registerMetrics(registry prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		metrics.signIns, metrics.signOuts, metrics.backchannel, metrics.silentReauths,
		metrics.userinfo, metrics.sessions, metrics.providerDuration,
	} {
		if err := registry.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// countMemorySessions sums the sessions of every memory store in use.
func countMemorySessions() float64 {
	var n int
	sharedPool.Range(func(_, value any) bool {
		if s, ok := value.(*sharedState); ok {
			if m, ok := s.store.(*memoryStore); ok {
				n += m.count()
			}
		}
		return true
	})
	return float64(n)
}

// endpointKey labels an outgoing request with the provider endpoint it
// calls, for the latency histogram.
type endpointKey struct{}

func withEndpoint(ctx context.Context, endpoint string) context.Context {
	return context.WithValue(ctx, endpointKey{}, endpoint)
}

// timedTransport observes the latency of every call to the provider.
type timedTransport struct{ next http.RoundTripper }

func (t timedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	endpoint, _ := req.Context().Value(endpointKey{}).(string)
	if endpoint == "" {
		endpoint = "other"
	}
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	metrics.providerDuration.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
	return resp, err
}

// events emits the module's Caddy events (the events app), so that sites
// can hook their own handlers to sign-ins and sign-outs. Names and data:
//
//	pliro_signed_in          customer_id, sid
//	pliro_signed_out         customer_id, sid
//	pliro_backchannel_logout customer_id, sid, sessions_ended
type events struct {
	ctx caddy.Context
	app *caddyevents.App
}

func (e *events) emit(name string, data map[string]any) {
	if e == nil || e.app == nil {
		return
	}
	e.app.Emit(e.ctx, name, data)
}
