package pliro

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// StoreConfig chooses where sessions live.
type StoreConfig struct {
	// Redis shares sessions, the replay cache and the sign-in sealing key
	// among every Caddy instance that uses the same Redis and key_prefix.
	// Unset: this Caddy's memory, saved to Caddy's storage.
	Redis *RedisStoreConfig `json:"redis,omitempty"`
}

// sharedPool holds the state that must outlive a config reload: the session
// store and the key that seals sign-in cookies. Configs with the same
// issuer, client ID, cookie name and store share one entry, so `caddy
// reload` keeps every customer signed in.
var sharedPool = caddy.NewUsagePool()

type sharedState struct {
	issuer, clientID, kind string // for the admin API

	store Store
	// keys gives the sealer of sign-in cookies: a key kept in Caddy's
	// storage, or, with Redis, the key all instances share there.
	keys sealerSource
}

func (s *sharedState) Destruct() error {
	return s.store.(caddy.Destructor).Destruct()
}

// sealerSource gives the sealer of sign-in cookies, loading its key on first
// use: Provision does no I/O. A *sealer is one too, with a fixed key.
type sealerSource interface {
	current(ctx context.Context) (*sealer, error)
}

// loadSharedState finds this config's shared state, or makes it. Nothing
// here reads or writes storage or the network (Provision also runs for
// `caddy validate`): the memory store reads its snapshot, and the sealing
// key is read, on first use.
func (h *Handler) loadSharedState(ctx caddy.Context) (*sharedState, error) {
	var redisCfg *RedisStoreConfig
	identity := []string{h.Issuer, h.ClientID, h.CookieName}
	if h.Store != nil && h.Store.Redis != nil {
		cfg, err := h.Store.Redis.expandPlaceholders(caddy.NewReplacer())
		if err != nil {
			return nil, fmt.Errorf("store redis: %w", err)
		}
		cfg = cfg.withDefaults()
		if err := cfg.validate(); err != nil {
			return nil, fmt.Errorf("store redis: %w", err)
		}
		// Sessions, replay cache and sealing key of one issuer and client
		// only: a session of another publication must never open this one.
		t := sha256.Sum256([]byte(h.Issuer + "\x00" + h.ClientID))
		cfg.tenant = hex.EncodeToString(t[:8]) + ":"
		redisCfg = &cfg
		b, _ := json.Marshal(cfg)
		identity = append(identity, "redis", string(b))
	}
	sum := sha256.Sum256([]byte(strings.Join(identity, "\x00")))
	h.shared = hex.EncodeToString(sum[:])
	dir := path.Join("pliro", h.shared[:16])
	storage, logger, issuer, clientID := configStorage(ctx), h.logger, h.Issuer, h.ClientID

	val, _, err := sharedPool.LoadOrNew(h.shared, func() (caddy.Destructor, error) {
		if redisCfg != nil {
			store, err := newRedisStore(*redisCfg, logger)
			if err != nil {
				return nil, err
			}
			return &sharedState{issuer: issuer, clientID: clientID, kind: "redis", store: store, keys: &redisSealer{store: store}}, nil
		}
		var persist *persistence
		if storage != nil {
			persist = &persistence{storage: storage, key: path.Join(dir, "sessions.json"), logger: logger}
		}
		return &sharedState{
			issuer: issuer, clientID: clientID, kind: "memory",
			store: newMemoryStoreWith(persist),
			keys:  &storedKey{storage: storage, name: path.Join(dir, "sealing-key"), logger: logger},
		}, nil
	})
	if err != nil {
		h.shared = "" // nothing to release in Cleanup
		return nil, fmt.Errorf("setting up session state: %w", err)
	}
	return val.(*sharedState), nil
}

// configStorage is the config's storage (the data directory by default), or
// nil when ctx carries no config, as a bare caddy.NewContext in unit tests,
// whose accessors dereference the missing config. Then sessions and the
// sealing key live in memory only.
func configStorage(ctx caddy.Context) (storage certmagic.Storage) {
	defer func() {
		if recover() != nil {
			storage = nil
		}
	}()
	return ctx.Storage()
}

// sealerFor returns the sealer of sign-in cookies.
func (h *Handler) sealerFor(ctx context.Context) (*sealer, error) {
	return h.keys.current(ctx)
}

// storedKey is a sealing key kept in Caddy's storage, so that a restart, or
// another instance sharing the storage, can open cookies sealed before. It
// is read (or created) on first use; a storage error is retried on a later
// use, once keyFailureMemo has passed.
type storedKey struct {
	storage certmagic.Storage // nil: a key for this process only
	name    string
	logger  *zap.Logger

	mu          sync.Mutex
	s           *sealer
	failed      error     // the last attempt's, answered until failedUntil
	failedUntil time.Time // wall clock, as keyLockWait
}

// keyFailureMemo is how long a failure to load the sealing key answers
// further uses at once. An attempt may wait keyLockWait for the storage
// lock while holding storedKey.mu; without the memo, the sign-ins queued
// behind it would each try (and wait) again in turn, the n-th for about n
// times keyLockWait. A variable for the tests.
var keyFailureMemo = 5 * time.Second

func (k *storedKey) current(ctx context.Context) (*sealer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.s != nil {
		return k.s, nil
	}
	if k.failed != nil && time.Now().Before(k.failedUntil) {
		return nil, k.failed
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	if k.storage != nil {
		var err error
		if key, err = loadOrCreateKey(ctx, k.storage, k.name, k.logger); err != nil {
			k.failed, k.failedUntil = err, time.Now().Add(keyFailureMemo)
			return nil, err
		}
	}
	s, err := newSealer(key)
	if err != nil {
		return nil, err
	}
	k.s = s
	return s, nil
}

// redisSealer keeps the sealer for the key shared through Redis.
type redisSealer struct {
	store  *redisStore
	mu     sync.Mutex
	key    []byte
	cached *sealer
}

func (rs *redisSealer) current(ctx context.Context) (*sealer, error) {
	key, err := rs.store.SealingKey(ctx)
	if err != nil {
		return nil, err
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.cached == nil || !bytes.Equal(key, rs.key) {
		s, err := newSealer(key)
		if err != nil {
			return nil, err
		}
		rs.cached, rs.key = s, key
	}
	return rs.cached, nil
}

// keyLockWait bounds the wait for the storage lock around creating the
// sealing key. It outlasts a lock left behind by an instance that crashed
// while holding it: certmagic's file storage breaks such a lock once it has
// not been refreshed for 10 s. A variable for the tests.
var keyLockWait = 20 * time.Second

// loadOrCreateKey returns the 32-byte key kept in storage under name,
// creating it on first use. Instances that share Caddy's storage share the
// key.
//
// Creating it holds the storage's lock: without it, two instances that
// start together could both find no key, each store its own, and go on
// sealing with different keys, so that a sign-in started on one fails on
// the other (the later write wins in storage, but the first writer keeps
// using its key until restart). When the lock cannot be had within
// keyLockWait the caller gets an error, not a key made without it: the
// sign-in that needed it fails visibly, and storedKey tries again on the
// next one, whereas a key that silently differs between instances fails
// sign-ins at random and only until somebody restarts.
func loadOrCreateKey(ctx context.Context, storage certmagic.Storage, name string, logger *zap.Logger) ([]byte, error) {
	// The key serves everyone: a visitor hanging up must not abandon it
	// halfway, nor leave the lock behind.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), keyLockWait)
	defer cancel()
	// Nearly always the key exists: read it without the lock.
	if key, err := loadKey(ctx, storage, name); err != nil || key != nil {
		return key, err
	}
	lock := name + ".create"
	if err := storage.Lock(ctx, lock); err != nil {
		return nil, fmt.Errorf("locking %s in storage to create it (another instance may hold the lock): %w", name, err)
	}
	defer func() {
		if err := storage.Unlock(context.WithoutCancel(ctx), lock); err != nil {
			logger.Warn("unlocking the sealing key in storage", zap.String("key", name), zap.Error(err))
		}
	}()
	// Another instance may have created it while we waited for the lock.
	if key, err := loadKey(ctx, storage, name); err != nil || key != nil {
		return key, err
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	if err := storage.Store(ctx, name, key); err != nil {
		return nil, fmt.Errorf("writing %s to storage: %w", name, err)
	}
	return key, nil
}

// loadKey reads the key; nil and no error when there is none (or it is not
// 32 bytes long, and is to be replaced).
func loadKey(ctx context.Context, storage certmagic.Storage, name string) ([]byte, error) {
	key, err := storage.Load(ctx, name)
	switch {
	case err == nil && len(key) == 32:
		return key, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("reading %s from storage: %w", name, err)
	}
	return nil, nil
}
