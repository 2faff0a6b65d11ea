package pliro

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterModule(adminSessions{})
}

// adminSessions adds /pliro/sessions to Caddy's admin API (protected like
// the rest of it: by default reachable only on localhost), for support desks
// and incident response:
//
//	GET    /pliro/sessions             how many sessions each store holds
//	DELETE /pliro/sessions?sub=<id>    end every session of a customer
//	DELETE /pliro/sessions?sid=<sid>   end every session of a Pliro session
//
// A DELETE acts on every store in use (every site, every Redis).
type adminSessions struct{}

// CaddyModule returns the Caddy module information.
func (adminSessions) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.pliro",
		New: func() caddy.Module { return new(adminSessions) },
	}
}

// Routes implements caddy.AdminRouter.
func (a adminSessions) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/pliro/sessions", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// storeStatus is one store's line in the GET answer.
type storeStatus struct {
	Issuer   string `json:"issuer"`
	ClientID string `json:"client_id"`
	Store    string `json:"store"`
	Sessions int    `json:"sessions"`
}

// sessionCounter is implemented by stores that can count their sessions.
type sessionCounter interface {
	countSessions(r *http.Request) (int, error)
}

func (adminSessions) serve(w http.ResponseWriter, r *http.Request) error {
	states := sharedStates()
	switch r.Method {
	case http.MethodGet:
		out := []storeStatus{}
		for _, st := range states {
			n, err := st.store.(sessionCounter).countSessions(r)
			if err != nil {
				return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("counting sessions: %w", err)}
			}
			out = append(out, storeStatus{Issuer: st.issuer, ClientID: st.clientID, Store: st.kind, Sessions: n})
		}
		return writeAdminJSON(w, out)
	case http.MethodDelete:
		sub, sid := r.URL.Query().Get("sub"), r.URL.Query().Get("sid")
		if (sub == "") == (sid == "") {
			return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: errors.New("give exactly one of ?sub=<customer ID> or ?sid=<Pliro session ID>")}
		}
		ended := 0
		for _, st := range states {
			var n int
			var err error
			if sub != "" {
				n, err = st.store.DeleteBySubject(r.Context(), sub)
			} else {
				n, err = st.store.DeleteByProviderSID(r.Context(), sid, "")
			}
			if err != nil {
				return caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("ending sessions: %w", err)}
			}
			ended += n
		}
		return writeAdminJSON(w, map[string]int{"ended": ended})
	default:
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: errors.New("use GET or DELETE")}
	}
}

// sharedStates lists the states in use, one per store.
func sharedStates() []*sharedState {
	var states []*sharedState
	sharedPool.Range(func(_, value any) bool {
		if st, ok := value.(*sharedState); ok {
			states = append(states, st)
		}
		return true
	})
	return states
}

func writeAdminJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

// Interface guards
var _ caddy.AdminRouter = (*adminSessions)(nil)
