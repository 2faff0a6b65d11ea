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
	// sealer seals sign-in cookies with a key kept in Caddy's storage; with
	// Redis, redisKeys gives the key all instances share instead.
	sealer    *sealer
	redisKeys *redisSealer
}

func (s *sharedState) Destruct() error {
	return s.store.(caddy.Destructor).Destruct()
}

// loadSharedState finds this config's shared state, or makes it. With the
// memory store, the sealing key and the sessions saved in Caddy's storage
// are read back, so a restart keeps customers signed in and sign-ins in
// progress valid. The Redis store connects lazily: nothing here touches
// the network.
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
		redisCfg = &cfg
		b, _ := json.Marshal(cfg)
		identity = append(identity, "redis", string(b))
	}
	sum := sha256.Sum256([]byte(strings.Join(identity, "\x00")))
	h.shared = hex.EncodeToString(sum[:])
	dir := path.Join("pliro", h.shared[:16])
	storage, logger, issuer, clientID := ctx.Storage(), h.logger, h.Issuer, h.ClientID

	val, _, err := sharedPool.LoadOrNew(h.shared, func() (caddy.Destructor, error) {
		if redisCfg != nil {
			store, err := newRedisStore(*redisCfg, logger)
			if err != nil {
				return nil, err
			}
			return &sharedState{issuer: issuer, clientID: clientID, kind: "redis", store: store, redisKeys: &redisSealer{store: store}}, nil
		}
		key, err := loadOrCreateKey(storage, path.Join(dir, "sealing-key"))
		if err != nil {
			return nil, err
		}
		s, err := newSealer(key)
		if err != nil {
			return nil, err
		}
		store := newMemoryStoreWith(&persistence{storage: storage, key: path.Join(dir, "sessions.json"), logger: logger})
		return &sharedState{issuer: issuer, clientID: clientID, kind: "memory", store: store, sealer: s}, nil
	})
	if err != nil {
		h.shared = "" // nothing to release in Cleanup
		return nil, fmt.Errorf("setting up session state: %w", err)
	}
	return val.(*sharedState), nil
}

// sealerFor returns the sealer of sign-in cookies: the one made at
// provision time, or, with Redis, the one for the key all instances share
// (fetched on first use, then cached by the store).
func (h *Handler) sealerFor(ctx context.Context) (*sealer, error) {
	if h.redisKeys != nil {
		return h.redisKeys.get(ctx)
	}
	return h.sealer, nil
}

// redisSealer keeps the sealer for the key shared through Redis.
type redisSealer struct {
	store  *redisStore
	mu     sync.Mutex
	key    []byte
	sealer *sealer
}

func (rs *redisSealer) get(ctx context.Context) (*sealer, error) {
	key, err := rs.store.SealingKey(ctx)
	if err != nil {
		return nil, err
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.sealer == nil || !bytes.Equal(key, rs.key) {
		s, err := newSealer(key)
		if err != nil {
			return nil, err
		}
		rs.sealer, rs.key = s, key
	}
	return rs.sealer, nil
}

// loadOrCreateKey returns the 32-byte key kept in storage under name,
// creating it on first use. Instances that share Caddy's storage share the
// key.
func loadOrCreateKey(storage certmagic.Storage, name string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key, err := storage.Load(ctx, name)
	if err == nil && len(key) == 32 {
		return key, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading %s from storage: %w", name, err)
	}
	key = make([]byte, 32)
	_, _ = rand.Read(key)
	if err := storage.Store(ctx, name, key); err != nil {
		return nil, fmt.Errorf("writing %s to storage: %w", name, err)
	}
	return key, nil
}
