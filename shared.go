package pliro

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
)

// sharedPool holds the state that must outlive a config reload: the session
// store and the key that seals sign-in cookies. Configs with the same
// issuer, client ID and cookie name share one entry, so `caddy reload`
// keeps every customer signed in.
var sharedPool = caddy.NewUsagePool()

type sharedState struct {
	store  *memoryStore
	sealer *sealer
}

func (s *sharedState) Destruct() error { return s.store.Destruct() }

// loadSharedState finds this config's shared state, or makes it: the
// sealing key and the sessions saved in Caddy's storage are read back, so
// a restart keeps customers signed in and sign-ins in progress valid.
func (h *Handler) loadSharedState(ctx caddy.Context) (*sharedState, error) {
	h.shared = strings.Join([]string{h.Issuer, h.ClientID, h.CookieName}, "|")
	sum := sha256.Sum256([]byte(h.shared))
	dir := path.Join("pliro", hex.EncodeToString(sum[:8]))
	storage, logger := ctx.Storage(), h.logger
	val, _, err := sharedPool.LoadOrNew(h.shared, func() (caddy.Destructor, error) {
		key, err := loadOrCreateKey(storage, path.Join(dir, "sealing-key"))
		if err != nil {
			return nil, err
		}
		s, err := newSealer(key)
		if err != nil {
			return nil, err
		}
		store := newMemoryStoreWith(&persistence{storage: storage, key: path.Join(dir, "sessions.json"), logger: logger})
		return &sharedState{store: store, sealer: s}, nil
	})
	if err != nil {
		h.shared = "" // nothing to release in Cleanup
		return nil, fmt.Errorf("setting up session state: %w", err)
	}
	return val.(*sharedState), nil
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
