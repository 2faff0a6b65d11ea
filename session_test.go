package pliro

import (
	"context"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// bothStores makes a fresh store of each kind.
var bothStores = map[string]func(t *testing.T) Store{
	"memory": func(t *testing.T) Store { m := newMemoryStore(); t.Cleanup(func() { _ = m.Destruct() }); return m },
	"redis":  func(t *testing.T) Store { return newTestRedisStore(t, startTestRedis(t).addr, nil) },
}

// TestReplaceNeverResurrectsAnEndedSession: a request loads a session, a
// back-channel logout ends it, then the request writes its refreshed claims
// back. Save would bring the session back to life; Replace must not.
func TestReplaceNeverResurrectsAnEndedSession(t *testing.T) {
	for name, store := range bothStores {
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

// TestVisitDoesNotUndoARefresh: request A loads a session and, a minute
// after the last visit, records its visit; meanwhile request B refreshed
// the customer's claims from userinfo (the plan was cancelled). Writing A's
// whole copy back would restore the old plan until the next refresh; Touch
// writes only the visit.
func TestVisitDoesNotUndoARefresh(t *testing.T) {
	for name, store := range bothStores {
		t.Run(name, func(t *testing.T) {
			st := store(t)
			ctx := context.Background()
			t0 := time.Now().Add(-2 * time.Minute).Truncate(time.Millisecond)
			s := &Session{Subject: testSubject, ProviderSID: testProviderSID, Plan: "premium", Created: t0, LastSeen: t0, ClaimsAt: t0}
			if err := st.Save(ctx, "k", s, t0.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			read, _, err := st.Load(ctx, "k") // request A
			if err != nil {
				t.Fatal(err)
			}

			refreshed := *read // request B
			refreshed.Plan, refreshed.ClaimsAt = "", time.Now()
			if ok, err := st.Replace(ctx, "k", &refreshed, t0.Add(time.Hour)); err != nil || !ok {
				t.Fatalf("Replace: %v %v", ok, err)
			}

			seen := time.Now().Truncate(time.Millisecond)
			if ok, err := st.Touch(ctx, "k", seen, seen.Add(time.Hour)); err != nil || !ok {
				t.Fatalf("Touch of a live session: %v %v", ok, err)
			}
			got, found, err := st.Load(ctx, "k")
			if err != nil || !found {
				t.Fatalf("Load after Touch: %v %v", found, err)
			}
			if got.Plan != "" {
				t.Errorf("plan %q after the visit; the refresh removed it", got.Plan)
			}
			if !got.LastSeen.Equal(seen) {
				t.Errorf("LastSeen %v, want %v", got.LastSeen, seen)
			}

			// A later refresh carrying an older LastSeen, and the earlier
			// deadline that goes with it, moves neither the visit nor the
			// deadline it set back.
			again := *got
			again.LastSeen = t0
			if ok, err := st.Replace(ctx, "k", &again, time.Now().Add(100*time.Millisecond)); err != nil || !ok {
				t.Fatalf("Replace: %v %v", ok, err)
			}
			time.Sleep(200 * time.Millisecond)
			got, found, err = st.Load(ctx, "k")
			if err != nil || !found {
				t.Fatalf("the session ended at the refresh's older deadline, not the visit's: %v %v", found, err)
			}
			if !got.LastSeen.Equal(seen) {
				t.Errorf("LastSeen %v after a refresh with an older copy, want %v", got.LastSeen, seen)
			}

			// Touch never brings back an ended session.
			if err := st.Delete(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			if ok, err := st.Touch(ctx, "k", seen, seen.Add(time.Hour)); err != nil || ok {
				t.Fatalf("Touch of an ended session: %v %v", ok, err)
			}
			if _, found, _ := st.Load(ctx, "k"); found {
				t.Fatal("ended session came back")
			}
		})
	}
}

// The marks of Pliro sessions ended by back-channel logout: read back with
// their time, forgotten after their ttl, and (memory store) kept across a
// restart like the replay cache.
func TestSIDEndedMarks(t *testing.T) {
	for name, store := range bothStores {
		t.Run(name, func(t *testing.T) {
			st := store(t)
			ctx := context.Background()
			at := time.Now().Add(-3 * time.Second).Truncate(time.Second)
			if err := st.MarkSIDEnded(ctx, "sid-1", at, time.Minute); err != nil {
				t.Fatal(err)
			}
			if err := st.MarkSIDEnded(ctx, "sid-short", at, 50*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			// A late or retried older logout for the same sid does not move
			// the time back.
			if err := st.MarkSIDEnded(ctx, "sid-1", at.Add(-time.Minute), time.Minute); err != nil {
				t.Fatal(err)
			}
			got, ok, err := st.SIDEndedAt(ctx, "sid-1")
			if err != nil || !ok || !got.Equal(at) {
				t.Fatalf("SIDEndedAt(sid-1) = %v, %v, %v; want %v", got, ok, err, at)
			}
			if _, ok, err := st.SIDEndedAt(ctx, "sid-unknown"); ok || err != nil {
				t.Errorf("unknown sid marked: %v %v", ok, err)
			}
			time.Sleep(100 * time.Millisecond)
			if _, ok, _ := st.SIDEndedAt(ctx, "sid-short"); ok {
				t.Errorf("mark outlived its ttl")
			}
		})
	}

	t.Run("memory store restart", func(t *testing.T) {
		fsStore := &certmagic.FileStorage{Path: t.TempDir()}
		m1 := newMemoryStoreWith(&persistence{storage: fsStore, key: "s.json", logger: zap.NewNop()})
		at := time.Now().Truncate(time.Second)
		if err := m1.MarkSIDEnded(context.Background(), "sid-1", at, time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := m1.Destruct(); err != nil {
			t.Fatal(err)
		}
		m2 := newMemoryStoreWith(&persistence{storage: fsStore, key: "s.json", logger: zap.NewNop()})
		t.Cleanup(func() { _ = m2.Destruct() })
		if got, ok, _ := m2.SIDEndedAt(context.Background(), "sid-1"); !ok || !got.Equal(at) {
			t.Errorf("after restart: %v %v; want %v", got, ok, at)
		}
	})
}
