package pliro

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// unitStore is a memory store whose sweeper stops with the test.
func unitStore(t testing.TB) *memoryStore {
	t.Helper()
	m := newMemoryStore()
	t.Cleanup(func() { _ = m.Destruct() })
	return m
}

// indexSizes reports the index entries, to prove nothing leaks.
func (m *memoryStore) indexSizes() (sessions, bySID, bySub, used int) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.sessions), len(m.bySID), len(m.bySub), len(m.used)
}

func (m *memoryStore) indexed(index map[string]keySet, value string) []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return index[value].list()
}

func TestMemoryStoreSaveLoadDelete(t *testing.T) {
	clock := useUnitClock(t)
	m := unitStore(t)
	ctx := context.Background()
	s := &Session{Subject: "cus_a", ProviderSID: "sid_1", Email: "a@example.com", Plan: "premium"}

	if got, found, err := m.Load(ctx, "missing"); got != nil || found || err != nil {
		t.Fatalf("missing key: %v %v %v, want nil false nil", got, found, err)
	}
	if err := m.Save(ctx, "k1", s, clock.now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	got, found, err := m.Load(ctx, "k1")
	if err != nil || !found || got != s {
		t.Fatalf("Load = %v %v %v", got, found, err)
	}
	if err := m.Delete(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := m.Load(ctx, "k1"); found {
		t.Fatal("found after Delete")
	}
	// Deleting a missing key is a no-op, not an error.
	if err := m.Delete(ctx, "k1"); err != nil {
		t.Fatalf("Delete of a missing key: %v", err)
	}
	if n, sid, sub, _ := m.indexSizes(); n+sid+sub != 0 {
		t.Fatalf("after Delete: %d sessions, %d sid and %d subject index entries", n, sid, sub)
	}
}

func TestMemoryStoreDeadline(t *testing.T) {
	clock := useUnitClock(t)
	m := unitStore(t)
	ctx := context.Background()
	if err := m.Save(ctx, "k", &Session{Subject: "cus_a"}, clock.now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Minute - time.Nanosecond)
	if _, found, _ := m.Load(ctx, "k"); !found {
		t.Fatal("not found before the deadline")
	}
	clock.advance(time.Nanosecond)
	if _, found, err := m.Load(ctx, "k"); found || err != nil {
		t.Fatalf("at the deadline: found=%v err=%v, want not found", found, err)
	}
}

func TestMemoryStoreDeleteByProviderSID(t *testing.T) {
	clock := useUnitClock(t)
	ctx := context.Background()
	deadline := clock.now().Add(time.Hour)
	fill := func(t *testing.T) *memoryStore {
		m := unitStore(t)
		for key, s := range map[string]*Session{
			"a-laptop": {Subject: "cus_a", ProviderSID: "sid_a1"},
			"a-phone":  {Subject: "cus_a", ProviderSID: "sid_a1"},
			"a-tablet": {Subject: "cus_a", ProviderSID: "sid_a2"},
			"b-laptop": {Subject: "cus_b", ProviderSID: "sid_b1"},
			// The same sid under another subject: only a sid+sub logout
			// must tell them apart.
			"c-laptop": {Subject: "cus_c", ProviderSID: "sid_a1"},
		} {
			if err := m.Save(ctx, key, s, deadline); err != nil {
				t.Fatal(err)
			}
		}
		return m
	}
	alive := func(m *memoryStore, keys ...string) []string {
		var out []string
		for _, k := range keys {
			if _, found, _ := m.Load(ctx, k); found {
				out = append(out, k)
			}
		}
		return out
	}
	all := []string{"a-laptop", "a-phone", "a-tablet", "b-laptop", "c-laptop"}

	t.Run("sid only", func(t *testing.T) {
		m := fill(t)
		n, err := m.DeleteByProviderSID(ctx, "sid_a1", "")
		if err != nil || n != 3 {
			t.Fatalf("ended %d, %v; want 3", n, err)
		}
		if got := fmt.Sprint(alive(m, all...)); got != "[a-tablet b-laptop]" {
			t.Errorf("alive %s", got)
		}
		if keys := m.indexed(m.bySID, "sid_a1"); len(keys) != 0 {
			t.Errorf("sid index still holds %v", keys)
		}
		if keys := m.indexed(m.bySub, "cus_a"); fmt.Sprint(keys) != "[a-tablet]" {
			t.Errorf("subject index holds %v, want [a-tablet]", keys)
		}
		if keys := m.indexed(m.bySub, "cus_c"); len(keys) != 0 {
			t.Errorf("subject index still holds %v for cus_c", keys)
		}
	})
	t.Run("sid and subject", func(t *testing.T) {
		m := fill(t)
		n, err := m.DeleteByProviderSID(ctx, "sid_a1", "cus_a")
		if err != nil || n != 2 {
			t.Fatalf("ended %d, %v; want 2", n, err)
		}
		if got := fmt.Sprint(alive(m, all...)); got != "[a-tablet b-laptop c-laptop]" {
			t.Errorf("alive %s", got)
		}
		if keys := m.indexed(m.bySID, "sid_a1"); fmt.Sprint(keys) != "[c-laptop]" {
			t.Errorf("sid index holds %v, want [c-laptop]", keys)
		}
	})
	t.Run("sid with a subject it does not carry", func(t *testing.T) {
		m := fill(t)
		if n, err := m.DeleteByProviderSID(ctx, "sid_b1", "cus_a"); err != nil || n != 0 {
			t.Fatalf("ended %d, %v; want 0", n, err)
		}
		if len(alive(m, all...)) != len(all) {
			t.Error("a session ended")
		}
	})
	t.Run("unknown and empty sid", func(t *testing.T) {
		m := fill(t)
		for _, sid := range []string{"sid_unknown", ""} {
			if n, err := m.DeleteByProviderSID(ctx, sid, ""); err != nil || n != 0 {
				t.Fatalf("sid %q: ended %d, %v; want 0", sid, n, err)
			}
		}
	})
	t.Run("subject", func(t *testing.T) {
		m := fill(t)
		n, err := m.DeleteBySubject(ctx, "cus_a")
		if err != nil || n != 3 {
			t.Fatalf("ended %d, %v; want 3", n, err)
		}
		if got := fmt.Sprint(alive(m, all...)); got != "[b-laptop c-laptop]" {
			t.Errorf("alive %s", got)
		}
		if keys := m.indexed(m.bySID, "sid_a1"); fmt.Sprint(keys) != "[c-laptop]" {
			t.Errorf("sid index holds %v, want [c-laptop]", keys)
		}
		if keys := m.indexed(m.bySID, "sid_a2"); len(keys) != 0 {
			t.Errorf("sid index still holds %v for sid_a2", keys)
		}
		if n, err := m.DeleteBySubject(ctx, ""); err != nil || n != 0 {
			t.Fatalf("empty subject: ended %d, %v; want 0", n, err)
		}
	})
}

// TestMemoryStoreResaveReindexes: a session saved again with another sid
// (silent re-authentication gives a new Pliro session) must be found by the
// new sid only; a back-channel logout for the old sid must not end it.
func TestMemoryStoreResaveReindexes(t *testing.T) {
	clock := useUnitClock(t)
	m := unitStore(t)
	ctx := context.Background()
	deadline := clock.now().Add(time.Hour)
	if err := m.Save(ctx, "k", &Session{Subject: "cus_a", ProviderSID: "sid_old"}, deadline); err != nil {
		t.Fatal(err)
	}
	if err := m.Save(ctx, "k", &Session{Subject: "cus_b", ProviderSID: "sid_new"}, deadline); err != nil {
		t.Fatal(err)
	}
	if n, _ := m.DeleteByProviderSID(ctx, "sid_old", ""); n != 0 {
		t.Fatalf("the old sid ended %d sessions", n)
	}
	if n, _ := m.DeleteBySubject(ctx, "cus_a"); n != 0 {
		t.Fatalf("the old subject ended %d sessions", n)
	}
	if _, sid, sub, _ := m.indexSizes(); sid != 1 || sub != 1 {
		t.Fatalf("%d sid and %d subject index entries, want 1 each", sid, sub)
	}
	if n, _ := m.DeleteByProviderSID(ctx, "sid_new", "cus_b"); n != 1 {
		t.Fatalf("the new sid ended %d sessions, want 1", n)
	}
	if n, sid, sub, _ := m.indexSizes(); n+sid+sub != 0 {
		t.Fatalf("left %d sessions, %d sid and %d subject index entries", n, sid, sub)
	}
}

// TestMemoryStoreReplaceNeverResurrects: a request loads a session, the
// customer signs out in another tab (or Pliro's back-channel logout ends the
// session), then the first request writes its update (a visit, fresh
// claims). The update must not bring the ended session back.
func TestMemoryStoreReplaceNeverResurrects(t *testing.T) {
	clock := useUnitClock(t)
	m := unitStore(t)
	ctx := context.Background()
	deadline := clock.now().Add(time.Hour)
	s := &Session{Subject: "cus_a", ProviderSID: "sid_1"}
	if err := m.Save(ctx, "k", s, deadline); err != nil {
		t.Fatal(err)
	}
	loaded, _, _ := m.Load(ctx, "k")
	if n, _ := m.DeleteByProviderSID(ctx, "sid_1", ""); n != 1 {
		t.Fatalf("back-channel logout ended %d sessions", n)
	}
	touched := *loaded
	touched.LastSeen = clock.now()
	if ok, err := m.Replace(ctx, "k", &touched, deadline); ok || err != nil {
		t.Fatalf("Replace of an ended session = %v, %v; want false, nil", ok, err)
	}
	if _, found, _ := m.Load(ctx, "k"); found {
		t.Fatal("the ended session is back")
	}
	if n, sid, sub, _ := m.indexSizes(); n+sid+sub != 0 {
		t.Fatalf("Replace left %d sessions, %d sid and %d subject index entries", n, sid, sub)
	}
}

func TestMemoryStoreReplace(t *testing.T) {
	clock := useUnitClock(t)
	m := unitStore(t)
	ctx := context.Background()
	if err := m.Save(ctx, "k", &Session{Subject: "cus_a", ProviderSID: "sid_old"}, clock.now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// A live session is replaced and re-indexed, with its new deadline.
	ok, err := m.Replace(ctx, "k", &Session{Subject: "cus_a", ProviderSID: "sid_new"}, clock.now().Add(time.Hour))
	if !ok || err != nil {
		t.Fatalf("Replace of a live session = %v, %v", ok, err)
	}
	if keys := m.indexed(m.bySID, "sid_old"); len(keys) != 0 {
		t.Errorf("old sid still indexed: %v", keys)
	}
	if keys := m.indexed(m.bySID, "sid_new"); fmt.Sprint(keys) != "[k]" {
		t.Errorf("new sid indexed as %v", keys)
	}
	clock.advance(30 * time.Minute)
	if _, found, _ := m.Load(ctx, "k"); !found {
		t.Fatal("the replaced session lost its new deadline")
	}
	// An expired session, not yet swept, is not replaced either.
	clock.advance(time.Hour)
	if ok, err := m.Replace(ctx, "k", &Session{Subject: "cus_a"}, clock.now().Add(time.Hour)); ok || err != nil {
		t.Fatalf("Replace of an expired session = %v, %v; want false, nil", ok, err)
	}
	if _, found, _ := m.Load(ctx, "k"); found {
		t.Fatal("the expired session is back")
	}
}

// TestMemoryStoreSweepLeavesNoLeak: sessions nobody comes back for, and
// their index entries, must be removed, or memory grows with every visitor
// who ever signed in.
func TestMemoryStoreSweepLeavesNoLeak(t *testing.T) {
	clock := useUnitClock(t)
	m := unitStore(t)
	ctx := context.Background()
	for i := range 100 {
		s := &Session{Subject: fmt.Sprintf("cus_%d", i%10), ProviderSID: fmt.Sprintf("sid_%d", i)}
		if err := m.Save(ctx, fmt.Sprintf("k%d", i), s, clock.now().Add(time.Duration(i+1)*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if _, err := m.FirstUse(ctx, fmt.Sprintf("state:%d", i), time.Duration(i+1)*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	clock.advance(50 * time.Minute)
	m.sweep()
	if n, sid, _, used := m.indexSizes(); n != 50 || sid != 50 || used != 50 {
		t.Fatalf("after half expired: %d sessions, %d sids, %d replay entries; want 50 each", n, sid, used)
	}
	clock.advance(50 * time.Minute)
	m.sweep()
	if n, sid, sub, used := m.indexSizes(); n+sid+sub+used != 0 {
		t.Fatalf("after all expired: %d sessions, %d sid and %d subject index entries, %d replay entries", n, sid, sub, used)
	}
}

func TestMemoryStoreFirstUse(t *testing.T) {
	clock := useUnitClock(t)
	m := unitStore(t)
	ctx := context.Background()
	use := func(key string) bool {
		t.Helper()
		first, err := m.FirstUse(ctx, key, 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return first
	}
	if !use("state:a") {
		t.Fatal("first use reported as a replay")
	}
	if use("state:a") {
		t.Fatal("replay reported as first use")
	}
	if !use("state:b") {
		t.Fatal("another key reported as a replay")
	}
	clock.advance(10*time.Minute - time.Second)
	if use("state:a") {
		t.Fatal("replay within the TTL reported as first use")
	}
	clock.advance(time.Second)
	if !use("state:a") {
		t.Fatal("use after the TTL reported as a replay")
	}
}

// TestMemoryStoreConcurrent is for the race detector: every operation at
// once, as many requests and the sweeper do.
func TestMemoryStoreConcurrent(t *testing.T) {
	m := unitStore(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				key := fmt.Sprintf("k%d-%d", g, i%20)
				s := &Session{Subject: fmt.Sprintf("cus_%d", i%5), ProviderSID: fmt.Sprintf("sid_%d", i%7)}
				deadline := time.Now().Add(time.Duration(i%3-1) * time.Minute)
				_ = m.Save(ctx, key, s, deadline)
				_, _, _ = m.Load(ctx, key)
				_, _ = m.FirstUse(ctx, key, time.Minute)
				switch i % 10 {
				case 0:
					_ = m.Delete(ctx, key)
				case 3:
					_, _ = m.DeleteByProviderSID(ctx, s.ProviderSID, s.Subject)
				case 6:
					_, _ = m.DeleteBySubject(ctx, s.Subject)
				case 8:
					_, _ = m.Replace(ctx, key, s, deadline)
				case 9:
					m.sweep()
				}
			}
		})
	}
	wg.Wait()
	// Every index entry points at a stored session that carries it.
	m.mu.RLock()
	defer m.mu.RUnlock()
	for sid, keys := range m.bySID {
		for _, k := range keys.list() {
			if e, ok := m.sessions[k]; !ok || e.session.ProviderSID != sid {
				t.Errorf("sid index %s -> %s is stale", sid, k)
			}
		}
	}
	for sub, keys := range m.bySub {
		for _, k := range keys.list() {
			if e, ok := m.sessions[k]; !ok || e.session.Subject != sub {
				t.Errorf("subject index %s -> %s is stale", sub, k)
			}
		}
	}
}
