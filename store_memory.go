package pliro

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// memoryStore is the default Store: sessions in this process's memory,
// indexed by subject and by Pliro sid so that back-channel logout finds them
// without a scan. It is shared through a caddy.UsagePool so that sessions
// survive config reloads, and, with persistence, written to Caddy's storage
// (the data directory by default) every few minutes and at shutdown, and
// read back at start, so that they survive a restart too.
type memoryStore struct {
	mu       sync.RWMutex
	sessions map[string]memoryEntry
	bySID    map[string]keySet    // Pliro sid -> session keys
	bySub    map[string]keySet    // subject -> session keys
	used     map[string]time.Time // replay cache: key -> forget after
	endedSID map[string]sidMark   // Pliro sids ended by back-channel logout
	ended    map[string]time.Time // ended since the last snapshot: key -> its deadline

	persist  *persistence  // nil: memory only
	endedMu  sync.Mutex    // one write of the ended list at a time
	endedDue chan struct{} // sessions ended since the ended list was written
	loadMu   sync.Mutex    // the snapshot is read on first use, not at provision
	retryAt  time.Time     // after a failed read
	loaded   atomic.Bool   // and written back only if it was read
	stop     chan struct{}
	stopped  chan struct{}
}

// persistence is where a memory store keeps its snapshot: the sessions
// under key, written every few minutes, and the sessions ended since then
// under key+".ended", written at once at every sign-out, so that a crash
// never brings an ended session back.
type persistence struct {
	storage certmagic.Storage
	key     string
	logger  *zap.Logger
}

func (p *persistence) endedKey() string { return p.key + ".ended" }

type memoryEntry struct {
	session  *Session
	deadline time.Time
}

const (
	// memorySweepInterval is how often expired sessions and replay-cache
	// entries are removed, so that memory is bounded by the sessions alive.
	memorySweepInterval = time.Minute
	// memoryPersistInterval is how often a persistent store writes its
	// snapshot: a crash loses at most this much of sign-ins and sign-outs.
	memoryPersistInterval = 5 * time.Minute
)

func newMemoryStore() *memoryStore { return newMemoryStoreWith(nil) }

// newMemoryStoreWith makes a store that, when p is not nil, starts from
// the snapshot in p (read on first use, so that provisioning, which also
// runs for `caddy validate`, does no I/O) and writes it back periodically
// and on Destruct.
func newMemoryStoreWith(p *persistence) *memoryStore {
	m := &memoryStore{
		sessions: make(map[string]memoryEntry),
		bySID:    make(map[string]keySet),
		bySub:    make(map[string]keySet),
		used:     make(map[string]time.Time),
		endedSID: make(map[string]sidMark),
		ended:    make(map[string]time.Time),
		persist:  p,
		endedDue: make(chan struct{}, 1),
		stop:     make(chan struct{}),
		stopped:  make(chan struct{}),
	}
	go m.sweepEvery(memorySweepInterval)
	return m
}

// ready reads the snapshot before the store is first used. A snapshot that
// could not be read (storage unreachable) is retried later and, until then,
// never overwritten: one hiccup at start must not sign everyone out.
func (m *memoryStore) ready() {
	if m.loaded.Load() {
		return
	}
	m.loadMu.Lock()
	defer m.loadMu.Unlock()
	if m.loaded.Load() || time.Now().Before(m.retryAt) {
		return
	}
	if m.persist != nil {
		if err := m.restore(); err != nil {
			m.persist.logger.Error("reading saved sessions; will retry", zap.Error(err))
			m.retryAt = time.Now().Add(10 * time.Second)
			return
		}
	}
	m.loaded.Store(true)
}

// Destruct stops the sweeper and writes the snapshot; the UsagePool calls
// it when the last config that used this store is unloaded (shutdown, or a
// config that no longer uses it).
func (m *memoryStore) Destruct() error {
	close(m.stop)
	<-m.stopped
	if m.persist == nil || !m.loaded.Load() {
		return nil // never used: nothing to write (caddy validate)
	}
	return m.save()
}

func (m *memoryStore) Load(_ context.Context, key string) (*Session, bool, error) {
	m.ready()
	m.mu.RLock()
	e, ok := m.sessions[key]
	m.mu.RUnlock()
	if !ok || !now().Before(e.deadline) {
		return nil, false, nil
	}
	return e.session, true, nil
}

func (m *memoryStore) Save(_ context.Context, key string, s *Session, deadline time.Time) error {
	m.ready()
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.sessions[key]; ok {
		m.unindex(key, old.session)
	}
	m.putLocked(key, s, deadline)
	return nil
}

func (m *memoryStore) Replace(_ context.Context, key string, s *Session, deadline time.Time) (bool, error) {
	m.ready()
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.liveLocked(key)
	if !ok {
		return false, nil
	}
	if old.session.LastSeen.After(s.LastSeen) {
		// A visit recorded since s was read (Touch) stays recorded, and so
		// does the deadline it moved.
		kept := *s
		kept.LastSeen = old.session.LastSeen
		s = &kept
	}
	if old.deadline.After(deadline) {
		deadline = old.deadline
	}
	m.unindex(key, old.session)
	m.putLocked(key, s, deadline)
	return true, nil
}

func (m *memoryStore) Touch(_ context.Context, key string, seen, deadline time.Time) (bool, error) {
	m.ready()
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.liveLocked(key)
	if !ok {
		return false, nil
	}
	touched := *old.session // sessions taken from a store are never modified
	touched.LastSeen = seen
	m.sessions[key] = memoryEntry{session: &touched, deadline: deadline}
	return true, nil
}

// liveLocked returns the session saved under key, unless its deadline
// passed.
func (m *memoryStore) liveLocked(key string) (memoryEntry, bool) {
	e, ok := m.sessions[key]
	return e, ok && now().Before(e.deadline)
}

func (m *memoryStore) putLocked(key string, s *Session, deadline time.Time) {
	m.sessions[key] = memoryEntry{session: s, deadline: deadline}
	addToIndex(m.bySub, s.Subject, key)
	addToIndex(m.bySID, s.ProviderSID, key)
}

func (m *memoryStore) Delete(_ context.Context, key string) error {
	m.ready()
	m.mu.Lock()
	n := m.endLocked(key)
	m.mu.Unlock()
	m.persistEnded(n)
	return nil
}

func (m *memoryStore) DeleteByProviderSID(_ context.Context, sid, subject string) (int, error) {
	m.ready()
	m.mu.Lock()
	n := 0
	for _, key := range m.bySID[sid].list() {
		if subject != "" && m.sessions[key].session.Subject != subject {
			continue
		}
		n += m.endLocked(key)
	}
	m.mu.Unlock()
	m.persistEnded(n)
	return n, nil
}

func (m *memoryStore) DeleteBySubject(_ context.Context, subject string) (int, error) {
	m.ready()
	m.mu.Lock()
	n := 0
	for _, key := range m.bySub[subject].list() {
		n += m.endLocked(key)
	}
	m.mu.Unlock()
	m.persistEnded(n)
	return n, nil
}

func (m *memoryStore) FirstUse(_ context.Context, key string, ttl time.Duration) (bool, error) {
	m.ready()
	m.mu.Lock()
	defer m.mu.Unlock()
	t := now()
	if until, ok := m.used[key]; ok && t.Before(until) {
		return false, nil
	}
	m.used[key] = t.Add(ttl)
	return true, nil
}

func (m *memoryStore) Forget(_ context.Context, key string) error {
	m.ready()
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.used, key)
	return nil
}

// sidMark is when Pliro ended one of its sessions, and when to forget it.
type sidMark struct {
	At    time.Time `json:"at"`
	Until time.Time `json:"until"`
}

func (m *memoryStore) MarkSIDEnded(_ context.Context, sid string, at time.Time, ttl time.Duration) error {
	m.ready()
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.endedSID[sid]; ok && old.At.After(at) {
		at = old.At // a late or retried older logout does not move it back
	}
	m.endedSID[sid] = sidMark{At: at, Until: now().Add(ttl)}
	return nil
}

func (m *memoryStore) SIDEndedAt(_ context.Context, sid string) (time.Time, bool, error) {
	m.ready()
	m.mu.RLock()
	defer m.mu.RUnlock()
	mark, ok := m.endedSID[sid]
	if !ok || !now().Before(mark.Until) {
		return time.Time{}, false, nil
	}
	return mark.At, true, nil
}

func (m *memoryStore) countSessions(*http.Request) (int, error) { return m.count(), nil }

// count returns how many sessions are stored, expired or not (for the
// admin API, the sessions gauge and the benchmarks).
func (m *memoryStore) count() int {
	m.ready()
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.sessions)
}

// endLocked ends a session (sign-out, logout) and, with persistence,
// remembers it as ended until the next snapshot. It returns 1 if there was
// a session to end.
func (m *memoryStore) endLocked(key string) int {
	e, ok := m.sessions[key]
	if !ok {
		return 0
	}
	m.deleteLocked(key)
	if m.persist != nil {
		m.ended[key] = e.deadline
	}
	return 1
}

// persistEnded has the list of sessions ended since the last snapshot
// written within endedFlushDelay, when n sessions were just ended: writes
// are grouped, so that a burst of logouts costs one write, not one each.
func (m *memoryStore) persistEnded(n int) {
	if n == 0 || m.persist == nil {
		return
	}
	select {
	case m.endedDue <- struct{}{}:
	default: // a write is already due
	}
}

// endedFlushDelay bounds how long an ended session is known only in
// memory; a crash within it may bring the session back.
const endedFlushDelay = time.Second

// maxEndedBeforeSnapshot brings the next snapshot forward when many
// sessions ended since the last one, so the ended list stays small.
const maxEndedBeforeSnapshot = 10_000

func (m *memoryStore) writeEnded() error {
	m.endedMu.Lock()
	defer m.endedMu.Unlock()
	m.mu.RLock()
	b, err := json.Marshal(m.ended)
	m.mu.RUnlock()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return m.persist.storage.Store(ctx, m.persist.endedKey(), b)
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
	defer close(m.stopped)
	t := time.NewTicker(interval)
	defer t.Stop()
	lastSave := time.Now()
	var flush <-chan time.Time
	for {
		select {
		case <-m.stop:
			return
		case <-m.endedDue:
			if flush == nil {
				flush = time.After(endedFlushDelay)
			}
		case <-flush:
			flush = nil
			m.mu.RLock()
			many := len(m.ended) > maxEndedBeforeSnapshot
			m.mu.RUnlock()
			var err error
			if many {
				lastSave = time.Now()
				err = m.save()
			} else {
				err = m.writeEnded()
			}
			if err != nil {
				m.persist.logger.Error("saving ended sessions", zap.Error(err))
			}
		case <-t.C:
			m.sweep()
			if m.persist != nil && m.loaded.Load() && time.Since(lastSave) >= memoryPersistInterval {
				lastSave = time.Now()
				if err := m.save(); err != nil {
					m.persist.logger.Error("saving sessions", zap.Error(err))
				}
			}
		}
	}
}

// memorySnapshot is what a persistent memory store writes to storage.
type memorySnapshot struct {
	Version  int                  `json:"version"`
	Sessions []snapshotEntry      `json:"sessions"`
	Used     map[string]time.Time `json:"used,omitempty"`
	EndedSID map[string]sidMark   `json:"ended_sids,omitempty"`
}

type snapshotEntry struct {
	Key      string    `json:"k"`
	Deadline time.Time `json:"d"`
	Session  *Session  `json:"s"`
}

const snapshotVersion = 1

// save writes the live sessions and replay-cache entries to storage. The
// snapshot holds access and ID tokens: Caddy's file storage writes it with
// mode 0600 next to the TLS private keys, which need the same care.
func (m *memoryStore) save() error {
	t := now()
	snap := memorySnapshot{Version: snapshotVersion, Used: map[string]time.Time{}, EndedSID: map[string]sidMark{}}
	m.mu.RLock()
	for key, e := range m.sessions {
		if t.Before(e.deadline) {
			snap.Sessions = append(snap.Sessions, snapshotEntry{Key: key, Deadline: e.deadline, Session: e.session})
		}
	}
	for key, until := range m.used {
		if t.Before(until) {
			snap.Used[key] = until
		}
	}
	for sid, mark := range m.endedSID {
		if t.Before(mark.Until) {
			snap.EndedSID[sid] = mark
		}
	}
	endedBefore := make([]string, 0, len(m.ended))
	for key := range m.ended {
		endedBefore = append(endedBefore, key)
	}
	m.mu.RUnlock()
	b, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("encoding sessions: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.persist.storage.Store(ctx, m.persist.key, b); err != nil {
		return fmt.Errorf("writing sessions to storage: %w", err)
	}
	// The snapshot leaves out what ended before it; what ended since must
	// stay listed.
	m.mu.Lock()
	for _, key := range endedBefore {
		delete(m.ended, key)
	}
	m.mu.Unlock()
	return m.writeEnded()
}

// restore loads the snapshot, if there is one, dropping what expired while
// Caddy was down.
func (m *memoryStore) restore() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := m.persist.storage.Load(ctx, m.persist.key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading sessions from storage: %w", err)
	}
	var snap memorySnapshot
	if err := json.Unmarshal(b, &snap); err != nil || snap.Version != snapshotVersion {
		// A file this version cannot read would block persistence for
		// ever if retried: start empty (customers sign in again).
		m.persist.logger.Error("discarding unreadable saved sessions", zap.Int("version", snap.Version), zap.Error(err))
		return nil
	}
	var ended map[string]time.Time
	if b, err := m.persist.storage.Load(ctx, m.persist.endedKey()); err == nil {
		_ = json.Unmarshal(b, &ended)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading ended sessions from storage: %w", err)
	}
	t := now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range snap.Sessions {
		if e.Session != nil && t.Before(e.Deadline) {
			m.putLocked(e.Key, e.Session, e.Deadline)
		}
	}
	for key, until := range snap.Used {
		if t.Before(until) {
			m.used[key] = until
		}
	}
	for sid, mark := range snap.EndedSID {
		if t.Before(mark.Until) {
			m.endedSID[sid] = mark
		}
	}
	// Sessions ended after that snapshot stay ended, and listed until the
	// next one.
	for key, deadline := range ended {
		m.deleteLocked(key)
		if t.Before(deadline) {
			m.ended[key] = deadline
		}
	}
	return nil
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
	for sid, mark := range m.endedSID {
		if !t.Before(mark.Until) {
			delete(m.endedSID, sid)
		}
	}
	for key, deadline := range m.ended {
		if !t.Before(deadline) {
			delete(m.ended, key)
		}
	}
}

// keySet is the store keys of one sid or subject. Nearly always there is
// one (a customer signed in on one device), held without a map of its own:
// a map for a single key would cost some 400 bytes per session, in each of
// the two indexes.
type keySet struct {
	one  string              // a key, "" for none
	more map[string]struct{} // the others, nil for none
}

// list returns the keys, in a slice of their own: the caller may delete
// them from the index as it goes.
func (ks keySet) list() []string {
	if ks.one == "" {
		return nil
	}
	keys := make([]string, 0, 1+len(ks.more))
	keys = append(keys, ks.one)
	for k := range ks.more {
		keys = append(keys, k)
	}
	return keys
}

func addToIndex(index map[string]keySet, value, key string) {
	if value == "" {
		return
	}
	ks := index[value]
	switch {
	case ks.one == "" || ks.one == key:
		ks.one = key
	default:
		if ks.more == nil {
			ks.more = make(map[string]struct{}, 1)
		}
		ks.more[key] = struct{}{}
	}
	index[value] = ks
}

func removeFromIndex(index map[string]keySet, value, key string) {
	ks, ok := index[value]
	if !ok {
		return
	}
	if ks.one == key {
		ks.one = ""
		for k := range ks.more { // another key takes its place
			ks.one = k
			delete(ks.more, k)
			break
		}
	} else {
		delete(ks.more, key)
	}
	switch {
	case ks.one == "":
		delete(index, value)
		return
	case len(ks.more) == 0:
		ks.more = nil
	}
	index[value] = ks
}

// Interface guards
var _ Store = (*memoryStore)(nil)
