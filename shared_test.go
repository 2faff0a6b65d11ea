package pliro

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
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
	keyLockWait = 1500 * time.Millisecond
	t.Cleanup(func() { keyLockWait = orig })

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
			// Once the storage works again, the next use gets a key.
			k.storage = &certmagic.FileStorage{Path: t.TempDir()}
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
