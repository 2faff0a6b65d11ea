package pliro

import (
	"context"
	"testing"
	"time"
)

// TestReplaceNeverResurrectsAnEndedSession: a request loads a session, a
// back-channel logout ends it, then the request writes its visit (LastSeen)
// back. Save would bring the session back to life; Replace must not.
func TestReplaceNeverResurrectsAnEndedSession(t *testing.T) {
	for name, store := range map[string]func(t *testing.T) Store{
		"memory": func(t *testing.T) Store { m := newMemoryStore(); t.Cleanup(func() { _ = m.Destruct() }); return m },
		"redis":  func(t *testing.T) Store { return newTestRedisStore(t, startTestRedis(t).addr, nil) },
	} {
		t.Run(name, func(t *testing.T) {
			st := store(t)
			ctx := context.Background()
			s := &Session{Subject: testSubject, ProviderSID: testProviderSID}
			deadline := time.Now().Add(time.Hour)
			if err := st.Save(ctx, "k", s, deadline); err != nil {
				t.Fatal(err)
			}
			if ok, err := st.Replace(ctx, "k", s, deadline); err != nil || !ok {
				t.Fatalf("Replace of a live session: %v %v", ok, err)
			}
			if _, err := st.DeleteByProviderSID(ctx, testProviderSID, ""); err != nil {
				t.Fatal(err)
			}
			if ok, err := st.Replace(ctx, "k", s, deadline); err != nil || ok {
				t.Fatalf("Replace of an ended session: %v %v", ok, err)
			}
			if _, found, _ := st.Load(ctx, "k"); found {
				t.Fatal("ended session came back")
			}
		})
	}
}
