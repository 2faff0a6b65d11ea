package pliro

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// slowStorage is file storage whose reads take a while, as on network
// storage (NFS, or a storage module backed by a database): it widens the
// gap between looking for the key and writing one, where a race happens.
type slowStorage struct {
	*certmagic.FileStorage
	delay time.Duration
}

func (s slowStorage) Load(ctx context.Context, key string) ([]byte, error) {
	time.Sleep(s.delay)
	return s.FileStorage.Load(ctx, key)
}

// TestSealingKeyCreatedOnceByRacingInstances: two Caddy instances share one
// storage and start at the same moment, so both find no sealing key. Were
// both to create one, each would seal with its own, and a sign-in started on
// one would fail on the other. With the storage lock, one creates it and
// the other reads it.
func TestSealingKeyCreatedOnceByRacingInstances(t *testing.T) {
	const name = "pliro/0123456789abcdef/sealing-key"
	for _, tc := range []struct {
		name    string
		initial []byte // in storage before the instances start; nil: none
	}{
		{"no key yet", nil},
		{"a truncated key, to be replaced", []byte("short")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.initial != nil {
				if err := (&certmagic.FileStorage{Path: dir}).Store(context.Background(), name, tc.initial); err != nil {
					t.Fatal(err)
				}
			}
			const instances = 2
			var (
				start = make(chan struct{})
				wg    sync.WaitGroup
				keys  [instances][]byte
				errs  [instances]error
			)
			for i := range instances {
				// Each instance has its own storage value on the same
				// directory, as separate processes would.
				storage := slowStorage{FileStorage: &certmagic.FileStorage{Path: dir}, delay: 50 * time.Millisecond}
				wg.Go(func() {
					<-start
					keys[i], errs[i] = loadOrCreateKey(context.Background(), storage, name, zap.NewNop())
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("instance %d: %v", i, err)
				}
			}
			stored, err := (&certmagic.FileStorage{Path: dir}).Load(context.Background(), name)
			if err != nil {
				t.Fatal(err)
			}
			for i, key := range keys {
				if len(key) != 32 || !bytes.Equal(key, stored) {
					t.Fatalf("instance %d uses key %x, storage holds %x", i, key, stored)
				}
			}
		})
	}
}

// TestSealingKeyLockFailures: when the lock cannot be had, no key is made
// without it (one made so could differ from another instance's); the
// caller gets an error that says what failed, and storedKey tries again on
// the next use.
func TestSealingKeyLockFailures(t *testing.T) {
	const name = "pliro/fedcba9876543210/sealing-key"
	orig := keyLockWait
	origMemo := keyFailureMemo
	keyLockWait, keyFailureMemo = 1500*time.Millisecond, 100*time.Millisecond
	t.Cleanup(func() { keyLockWait, keyFailureMemo = orig, origMemo })

	for _, tc := range []struct {
		name    string
		storage func(t *testing.T, dir string) certmagic.Storage
	}{
		{"lock held by a live instance", func(t *testing.T, dir string) certmagic.Storage {
			other := &certmagic.FileStorage{Path: dir}
			if err := other.Lock(context.Background(), name+".create"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = other.Unlock(context.Background(), name+".create") })
			return &certmagic.FileStorage{Path: dir}
		}},
		{"storage refuses to lock", func(t *testing.T, dir string) certmagic.Storage {
			return failingLock{&certmagic.FileStorage{Path: dir}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			k := &storedKey{storage: tc.storage(t, dir), name: name, logger: zap.NewNop()}
			start := time.Now()
			_, err := k.current(context.Background())
			if err == nil || !strings.Contains(err.Error(), "locking "+name) {
				t.Fatalf("got %v, want an error about locking", err)
			}
			if d := time.Since(start); d > keyLockWait+2*time.Second {
				t.Errorf("waited %s for the lock, bound is %s", d, keyLockWait)
			}
			if _, err := (&certmagic.FileStorage{Path: dir}).Load(context.Background(), name); err == nil {
				t.Fatal("a key was written without the lock")
			}
			// Once the storage works again, the next use after
			// keyFailureMemo gets a key.
			k.storage = &certmagic.FileStorage{Path: t.TempDir()}
			time.Sleep(keyFailureMemo)
			if s, err := k.current(context.Background()); err != nil || s == nil {
				t.Fatalf("after the failure: %v", err)
			}
		})
	}
}

type failingLock struct{ *certmagic.FileStorage }

func (failingLock) Lock(context.Context, string) error {
	return errors.New("lock service unavailable")
}

// TestSealingKeyFailureAnswersWaiters: the storage lock cannot be had, and
// many sign-ins need the sealing key at once. The first waits keyLockWait
// for the lock; the others, queued behind it, get its error at once rather
// than each waiting keyLockWait again in turn (the n-th sign-in would wait
// n times as long). Once keyFailureMemo has passed, a use tries again, and
// gets the key when the lock works.
func TestSealingKeyFailureAnswersWaiters(t *testing.T) {
	const name = "pliro/00112233aabbccdd/sealing-key"
	origWait, origMemo := keyLockWait, keyFailureMemo
	keyLockWait, keyFailureMemo = 400*time.Millisecond, 3*time.Second
	t.Cleanup(func() { keyLockWait, keyFailureMemo = origWait, origMemo })

	dir := t.TempDir()
	storage := &stuckLock{FileStorage: &certmagic.FileStorage{Path: dir}}
	k := &storedKey{storage: storage, name: name, logger: zap.NewNop()}
	const callers = 10
	var (
		wg   sync.WaitGroup
		errs [callers]error
	)
	start := time.Now()
	for i := range callers {
		wg.Go(func() { _, errs[i] = k.current(context.Background()) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	for i, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "locking "+name) {
			t.Fatalf("caller %d: got %v, want the error about locking", i, err)
		}
	}
	if n := storage.attempts.Load(); n != 1 {
		t.Errorf("%d attempts to lock, want 1 (the others answered with its failure)", n)
	}
	if elapsed > 3*keyLockWait {
		t.Errorf("%d callers took %s in all; one wait for the lock is %s", callers, elapsed, keyLockWait)
	}

	// Within keyFailureMemo, a use is answered at once without trying.
	storage.works.Store(true)
	if _, err := k.current(context.Background()); err == nil || storage.attempts.Load() != 1 {
		t.Fatalf("within the memo: %v after %d attempts", err, storage.attempts.Load())
	}
	// After it, the next use tries again and gets the key.
	time.Sleep(time.Until(start.Add(elapsed + keyFailureMemo)))
	if s, err := k.current(context.Background()); err != nil || s == nil {
		t.Fatalf("after the memo: %v", err)
	}
	if n := storage.attempts.Load(); n != 2 {
		t.Errorf("%d attempts to lock, want 2", n)
	}
	if key, err := (&certmagic.FileStorage{Path: dir}).Load(context.Background(), name); err != nil || len(key) != 32 {
		t.Fatalf("no key in storage after the retry: %v", err)
	}
}

// stuckLock is file storage whose lock is held elsewhere until works is
// set: Lock waits for the context to end.
type stuckLock struct {
	*certmagic.FileStorage
	attempts atomic.Int32
	works    atomic.Bool
}

func (s *stuckLock) Lock(ctx context.Context, name string) error {
	s.attempts.Add(1)
	if s.works.Load() {
		return s.FileStorage.Lock(ctx, name)
	}
	<-ctx.Done()
	return ctx.Err()
}
