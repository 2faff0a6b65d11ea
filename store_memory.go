package pliro

import (
	"context"
	"sync"
	"time"
)

// memoryStore is the default Store: sessions in this process's memory,
// indexed by subject and by Pliro sid so that back-channel logout finds them
// without a scan. It is shared through a caddy.UsagePool so that sessions
// survive config reloads.
type memoryStore struct {
	mu       sync.RWMutex
	sessions map[string]memoryEntry
	bySID    map[string]map[string]struct{} // Pliro sid -> session keys
	bySub    map[string]map[string]struct{} // subject -> session keys
	used     map[string]time.Time           // replay cache: key -> forget after

	stop chan struct{}
}

type memoryEntry struct {
	session  *Session
	deadline time.Time
}

// memorySweepInterval is how often expired sessions and replay-cache entries
// are removed, so that memory is bounded by the sessions alive.
const memorySweepInterval = time.Minute

func newMemoryStore() *memoryStore {
	m := &memoryStore{
		sessions: make(map[string]memoryEntry),
		bySID:    make(map[string]map[string]struct{}),
		bySub:    make(map[string]map[string]struct{}),
		used:     make(map[string]time.Time),
		stop:     make(chan struct{}),
	}
	go m.sweepEvery(memorySweepInterval)
	return m
}

// Destruct stops the sweeper; the UsagePool calls it when the last config
// that used this store is unloaded.
func (m *memoryStore) Destruct() error {
	close(m.stop)
	return nil
}

func (m *memoryStore) Load(_ context.Context, key string) (*Session, bool, error) {
	m.mu.RLock()
	e, ok := m.sessions[key]
	m.mu.RUnlock()
	if !ok || !now().Before(e.deadline) {
		return nil, false, nil
	}
	return e.session, true, nil
}

func (m *memoryStore) Save(_ context.Context, key string, s *Session, deadline time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.sessions[key]; ok {
		m.unindex(key, old.session)
	}
	m.sessions[key] = memoryEntry{session: s, deadline: deadline}
	addToIndex(m.bySub, s.Subject, key)
	addToIndex(m.bySID, s.ProviderSID, key)
	return nil
}

func (m *memoryStore) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.deleteLocked(key)
	return nil
}

func (m *memoryStore) DeleteByProviderSID(_ context.Context, sid, subject string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for key := range m.bySID[sid] {
		if subject != "" && m.sessions[key].session.Subject != subject {
			continue
		}
		m.deleteLocked(key)
		n++
	}
	return n, nil
}

func (m *memoryStore) DeleteBySubject(_ context.Context, subject string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for key := range m.bySub[subject] {
		m.deleteLocked(key)
		n++
	}
	return n, nil
}

func (m *memoryStore) FirstUse(_ context.Context, key string, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := now()
	if until, ok := m.used[key]; ok && t.Before(until) {
		return false, nil
	}
	m.used[key] = t.Add(ttl)
	return true, nil
}

// count returns how many sessions are stored, expired or not (for tests and
// the benchmarks' memory figures).
func (m *memoryStore) count() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.sessions)
}

func (m *memoryStore) deleteLocked(key string) {
	if e, ok := m.sessions[key]; ok {
		m.unindex(key, e.session)
		delete(m.sessions, key)
	}
}

func (m *memoryStore) unindex(key string, s *Session) {
	removeFromIndex(m.bySub, s.Subject, key)
	removeFromIndex(m.bySID, s.ProviderSID, key)
}

func (m *memoryStore) sweepEvery(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// sweep removes every session and replay-cache entry whose time is up.
func (m *memoryStore) sweep() {
	t := now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for key, e := range m.sessions {
		if !t.Before(e.deadline) {
			m.deleteLocked(key)
		}
	}
	for key, until := range m.used {
		if !t.Before(until) {
			delete(m.used, key)
		}
	}
}

func addToIndex(index map[string]map[string]struct{}, value, key string) {
	if value == "" {
		return
	}
	keys := index[value]
	if keys == nil {
		keys = make(map[string]struct{}, 1)
		index[value] = keys
	}
	keys[key] = struct{}{}
}

func removeFromIndex(index map[string]map[string]struct{}, value, key string) {
	keys := index[value]
	delete(keys, key)
	if len(keys) == 0 {
		delete(index, value)
	}
}

// Interface guards
var _ Store = (*memoryStore)(nil)
