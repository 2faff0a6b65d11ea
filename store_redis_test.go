package pliro

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// testRedis is a redis-server of the test's own, on a free loopback port,
// without persistence.
type testRedis struct {
	t    testing.TB
	bin  string
	port int
	dir  string
	addr string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// startRedis starts a redis-server for this test; stop kills it and
// restart starts a fresh one (empty: nothing is saved) on the same port.
// Without redis-server the test is skipped, except in CI, where it fails.
func startRedis(t testing.TB) (addr string, stop func(), restart func()) {
	r := startTestRedis(t)
	return r.addr, r.stop, r.restart
}

func startTestRedis(t testing.TB) *testRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is not installed, and CI must run the Redis store tests: " +
				"install it in .ci/run (apt-get install -y redis-server)")
		}
		t.Skip("redis-server is not installed (apt-get install redis-server); skipping the Redis store tests")
	}
	r := &testRedis{t: t, bin: bin, port: freePort(t), dir: t.TempDir()}
	r.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port))
	r.launch()
	t.Cleanup(r.stop)
	return r
}

func (r *testRedis) launch() {
	r.t.Helper()
	cmd := exec.Command(r.bin,
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", r.dir,
		"--logfile", filepath.Join(r.dir, "redis.log"),
		"--daemonize", "no",
	)
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("starting redis-server: %v", err)
	}
	r.mu.Lock()
	r.cmd = cmd
	r.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if redisPing(r.addr) {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			r.t.Fatalf("redis-server on %s did not start:\n%s", r.addr, log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *testRedis) stop() {
	r.mu.Lock()
	cmd := r.cmd
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT) // in case it was paused
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

func (r *testRedis) restart() {
	r.stop()
	r.launch()
}

// pause and resume stop and continue the process: an outage that loses no
// data.
func (r *testRedis) pause()  { r.signal(syscall.SIGSTOP) }
func (r *testRedis) resume() { r.signal(syscall.SIGCONT) }

func (r *testRedis) signal(sig os.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		if err := r.cmd.Process.Signal(sig); err != nil {
			r.t.Fatalf("signalling redis-server: %v", err)
		}
	}
}

// redisPing reports whether a Redis answers PING at addr.
func redisPing(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

// rawRedis is a plain client to look at what the store wrote.
func rawRedis(t testing.TB, addr string) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func newTestRedisStore(t testing.TB, addr string, mutate func(*RedisStoreConfig)) *redisStore {
	t.Helper()
	cfg := RedisStoreConfig{Addresses: []string{addr}}
	if mutate != nil {
		mutate(&cfg)
	}
	s, err := newRedisStore(cfg, nil)
	if err != nil {
		t.Fatalf("newRedisStore: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// waitRedisLive waits until the store's invalidation subscription is up.
func waitRedisLive(t testing.TB, s *redisStore, within time.Duration) {
	t.Helper()
	s.startSubscriber()
	deadline := time.Now().Add(within)
	for !s.live.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("invalidation subscription not up within %s", within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitRedisInvalidation waits until s has received an invalidation after
// its cache generation was since.
func waitRedisInvalidation(t testing.TB, s *redisStore, since uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.cache.generation() <= since {
		if time.Now().After(deadline) {
			t.Fatal("invalidation did not arrive within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testRedisSession is a session as big as a real one: Pliro's ID token is
// the bulk of it.
func testRedisSession(sub, sid string) *Session {
	tok := make([]byte, 660)
	_, _ = rand.Read(tok)
	t := time.Now().Truncate(time.Second)
	return &Session{
		Subject:     sub,
		ProviderSID: sid,
		Email:       sub + "@example.com",
		Name:        "Ada Lovelace",
		Plan:        "premium",
		PlanSlugs:   []string{"premium", "newsletter"},
		IDToken:     base64.RawURLEncoding.EncodeToString(tok),
		AccessToken: "pat_" + randomToken(32),
		Created:     t,
		LastSeen:    t,
	}
}

func sameSession(t *testing.T, got, want *Session) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if string(g) != string(w) {
		t.Errorf("session differs:\n got %s\nwant %s", g, w)
	}
}

func mustLoad(t *testing.T, s Store, key string) (*Session, bool) {
	t.Helper()
	sess, found, err := s.Load(context.Background(), key)
	if err != nil {
		t.Fatalf("Load(%q): %v", key, err)
	}
	return sess, found
}

func mustSave(t *testing.T, s Store, key string, sess *Session, deadline time.Time) {
	t.Helper()
	if err := s.Save(context.Background(), key, sess, deadline); err != nil {
		t.Fatalf("Save(%q): %v", key, err)
	}
}

// TestRedisStoreContract runs the Store contract against Redis, with the
// local cache on and off.
func TestRedisStoreContract(t *testing.T) {
	srv := startTestRedis(t)
	raw := rawRedis(t, srv.addr)
	ctx := context.Background()
	later := func() time.Time { return time.Now().Add(time.Hour) }

	for _, cache := range []string{"cache", "no_cache"} {
		newStore := func(t *testing.T) *redisStore {
			if err := raw.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			s := newTestRedisStore(t, srv.addr, func(c *RedisStoreConfig) {
				if cache == "no_cache" {
					c.LocalCacheTTL = -1
				}
			})
			if cache == "cache" {
				waitRedisLive(t, s, 2*time.Second)
			}
			return s
		}
		t.Run(cache, func(t *testing.T) {
			t.Run("load missing", func(t *testing.T) {
				s := newStore(t)
				sess, found, err := s.Load(ctx, "nope")
				if sess != nil || found || err != nil {
					t.Fatalf("Load(missing) = %v, %v, %v; want nil, false, nil", sess, found, err)
				}
			})
			t.Run("save load", func(t *testing.T) {
				s := newStore(t)
				want := testRedisSession("alice", "sid1")
				mustSave(t, s, "k1", want, later())
				got, found := mustLoad(t, s, "k1")
				if !found {
					t.Fatal("saved session not found")
				}
				sameSession(t, got, want)
				// Again, from the cache where it is on.
				got, found = mustLoad(t, s, "k1")
				if !found {
					t.Fatal("saved session not found the second time")
				}
				sameSession(t, got, want)
			})
			t.Run("save replaces", func(t *testing.T) {
				s := newStore(t)
				first := testRedisSession("alice", "sid1")
				mustSave(t, s, "k1", first, later())
				mustLoad(t, s, "k1") // cache it
				second := *first
				second.Plan = "premium-plus"
				mustSave(t, s, "k1", &second, later())
				got, _ := mustLoad(t, s, "k1")
				if got == nil || got.Plan != "premium-plus" {
					t.Fatalf("after re-save, plan = %v; want premium-plus", got)
				}
			})
			t.Run("expires at deadline", func(t *testing.T) {
				s := newStore(t)
				// Long enough that Save and Load finish before it on a
				// loaded machine.
				deadline := time.Now().Add(time.Second)
				mustSave(t, s, "k1", testRedisSession("alice", "sid1"), deadline)
				if _, found := mustLoad(t, s, "k1"); !found {
					if time.Now().Before(deadline) {
						t.Fatal("session not found before its deadline")
					}
					t.Fatal("Save and Load took longer than the session's second")
				}
				time.Sleep(time.Until(deadline) + 50*time.Millisecond)
				if _, found := mustLoad(t, s, "k1"); found {
					t.Fatal("session found after its deadline")
				}
				if n, _ := raw.Exists(ctx, s.sessionKey("k1")).Result(); n != 0 {
					t.Error("redis still holds the expired session")
				}
			})
			t.Run("deadline in the past ends the session", func(t *testing.T) {
				s := newStore(t)
				mustSave(t, s, "k1", testRedisSession("alice", "sid1"), later())
				mustSave(t, s, "k1", testRedisSession("alice", "sid1"), time.Now().Add(-time.Second))
				if _, found := mustLoad(t, s, "k1"); found {
					t.Fatal("session saved with a past deadline is found")
				}
				if n, _ := s.DeleteBySubject(ctx, "alice"); n != 0 {
					t.Errorf("DeleteBySubject found %d sessions; want 0", n)
				}
			})
			t.Run("delete", func(t *testing.T) {
				s := newStore(t)
				mustSave(t, s, "k1", testRedisSession("alice", "sid1"), later())
				mustLoad(t, s, "k1")
				if err := s.Delete(ctx, "k1"); err != nil {
					t.Fatal(err)
				}
				if _, found := mustLoad(t, s, "k1"); found {
					t.Fatal("deleted session found")
				}
				if err := s.Delete(ctx, "k1"); err != nil {
					t.Fatalf("deleting a missing session: %v", err)
				}
				for _, k := range []string{s.sidKey("sid1"), s.subKey("alice")} {
					if n, _ := raw.Exists(ctx, k).Result(); n != 0 {
						t.Errorf("index %s outlived its only session", k)
					}
				}
			})
			t.Run("delete by provider sid", func(t *testing.T) {
				s := newStore(t)
				mustSave(t, s, "a1", testRedisSession("alice", "sid1"), later())
				mustSave(t, s, "a2", testRedisSession("alice", "sid1"), later())
				mustSave(t, s, "b1", testRedisSession("bob", "sid1"), later()) // a shared sid, other subject
				mustSave(t, s, "a3", testRedisSession("alice", "sid2"), later())
				for _, k := range []string{"a1", "a2", "b1", "a3"} {
					mustLoad(t, s, k)
				}
				if n, err := s.DeleteByProviderSID(ctx, "unknown", ""); n != 0 || err != nil {
					t.Fatalf("unknown sid: %d, %v", n, err)
				}
				if n, err := s.DeleteByProviderSID(ctx, "", ""); n != 0 || err != nil {
					t.Fatalf("empty sid: %d, %v", n, err)
				}
				n, err := s.DeleteByProviderSID(ctx, "sid1", "alice")
				if err != nil || n != 2 {
					t.Fatalf("DeleteByProviderSID(sid1, alice) = %d, %v; want 2", n, err)
				}
				for k, want := range map[string]bool{"a1": false, "a2": false, "b1": true, "a3": true} {
					if _, found := mustLoad(t, s, k); found != want {
						t.Errorf("%s found = %v; want %v", k, found, want)
					}
				}
				if n, _ := s.DeleteByProviderSID(ctx, "sid1", ""); n != 1 {
					t.Errorf("DeleteByProviderSID(sid1) = %d; want 1 (bob's)", n)
				}
				if _, found := mustLoad(t, s, "b1"); found {
					t.Error("b1 found after DeleteByProviderSID(sid1)")
				}
				// The subject index no longer lists the sessions that went.
				if m, _ := raw.SMembers(ctx, s.subKey("alice")).Result(); !reflect.DeepEqual(m, []string{"a3"}) {
					t.Errorf("alice's index = %v; want [a3]", m)
				}
			})
			t.Run("delete by subject", func(t *testing.T) {
				s := newStore(t)
				mustSave(t, s, "a1", testRedisSession("alice", "sid1"), later())
				mustSave(t, s, "a2", testRedisSession("alice", "sid2"), later())
				mustSave(t, s, "b1", testRedisSession("bob", "sid3"), later())
				for _, k := range []string{"a1", "a2", "b1"} {
					mustLoad(t, s, k)
				}
				n, err := s.DeleteBySubject(ctx, "alice")
				if err != nil || n != 2 {
					t.Fatalf("DeleteBySubject(alice) = %d, %v; want 2", n, err)
				}
				for k, want := range map[string]bool{"a1": false, "a2": false, "b1": true} {
					if _, found := mustLoad(t, s, k); found != want {
						t.Errorf("%s found = %v; want %v", k, found, want)
					}
				}
				if n, _ := s.DeleteBySubject(ctx, "alice"); n != 0 {
					t.Errorf("second DeleteBySubject = %d; want 0", n)
				}
				if n, _ := raw.Exists(ctx, s.sidKey("sid1"), s.sidKey("sid2")).Result(); n != 0 {
					t.Error("sid indexes of deleted sessions remain")
				}
			})
			t.Run("re-save with another sid and subject re-indexes", func(t *testing.T) {
				s := newStore(t)
				mustSave(t, s, "k1", testRedisSession("alice", "sid1"), later())
				mustSave(t, s, "k1", testRedisSession("bob", "sid2"), later())
				if n, _ := s.DeleteByProviderSID(ctx, "sid1", ""); n != 0 {
					t.Errorf("old sid still ends %d sessions", n)
				}
				if n, _ := s.DeleteBySubject(ctx, "alice"); n != 0 {
					t.Errorf("old subject still ends %d sessions", n)
				}
				if _, found := mustLoad(t, s, "k1"); !found {
					t.Fatal("re-saved session gone")
				}
				if n, _ := raw.Exists(ctx, s.sidKey("sid1"), s.subKey("alice")).Result(); n != 0 {
					t.Error("old index sets still exist")
				}
				if n, _ := s.DeleteByProviderSID(ctx, "sid2", "bob"); n != 1 {
					t.Errorf("new sid ends %d sessions; want 1", n)
				}
			})
			t.Run("stale index entries are dropped when read", func(t *testing.T) {
				s := newStore(t)
				mustSave(t, s, "short", testRedisSession("alice", "sid1"), time.Now().Add(100*time.Millisecond))
				mustSave(t, s, "long", testRedisSession("alice", "sid1"), later())
				time.Sleep(150 * time.Millisecond)
				if n, _ := s.DeleteByProviderSID(ctx, "sid1", "alice"); n != 1 {
					t.Errorf("DeleteByProviderSID = %d; want 1 (the live one)", n)
				}
				mustSave(t, s, "short2", testRedisSession("alice", "sid1"), time.Now().Add(100*time.Millisecond))
				time.Sleep(150 * time.Millisecond)
				if n, _ := s.DeleteBySubject(ctx, "alice"); n != 0 {
					t.Errorf("DeleteBySubject = %d; want 0", n)
				}
				if ok, _ := raw.SIsMember(ctx, s.subKey("alice"), "short2").Result(); ok {
					t.Error("the subject index still lists an expired session after it was read")
				}
				if n, _ := s.DeleteByProviderSID(ctx, "sid1", ""); n != 0 {
					t.Errorf("DeleteByProviderSID = %d; want 0", n)
				}
				if ok, _ := raw.SIsMember(ctx, s.sidKey("sid1"), "short2").Result(); ok {
					t.Error("the sid index still lists an expired session after it was read")
				}
			})
			t.Run("index ttl covers the longest session", func(t *testing.T) {
				s := newStore(t)
				mustSave(t, s, "k1", testRedisSession("alice", "sid1"), time.Now().Add(2*time.Hour))
				mustSave(t, s, "k2", testRedisSession("alice", "sid2"), time.Now().Add(time.Hour))
				ttl, _ := raw.PTTL(ctx, s.subKey("alice")).Result()
				if ttl < 2*time.Hour {
					t.Errorf("subject index ttl %s is shorter than its longest session (2h)", ttl)
				}
				mustSave(t, s, "k2", testRedisSession("alice", "sid2"), time.Now().Add(5*time.Hour))
				if ttl, _ := raw.PTTL(ctx, s.subKey("alice")).Result(); ttl < 5*time.Hour {
					t.Errorf("subject index ttl %s not extended to 5h", ttl)
				}
				if ttl, _ := raw.PTTL(ctx, s.sessionKey("k1")).Result(); ttl > 2*time.Hour || ttl < 2*time.Hour-time.Minute {
					t.Errorf("session ttl %s; want its deadline, 2h", ttl)
				}
			})
			t.Run("no sid no sid index", func(t *testing.T) {
				s := newStore(t)
				mustSave(t, s, "k1", testRedisSession("alice", ""), later())
				if n, _ := raw.Exists(ctx, s.sidKey("")).Result(); n != 0 {
					t.Error("an empty sid got an index")
				}
				if n, _ := s.DeleteBySubject(ctx, "alice"); n != 1 {
					t.Errorf("DeleteBySubject = %d; want 1", n)
				}
			})
			t.Run("first use", func(t *testing.T) {
				s := newStore(t)
				// A ttl long enough that the three uses fall within it on a
				// loaded machine.
				const ttl = time.Second
				start := time.Now()
				for i, want := range []bool{true, false, false} {
					first, err := s.FirstUse(ctx, "jti-1", ttl)
					if err != nil || first != want {
						t.Fatalf("use %d after %s: FirstUse = %v, %v; want %v", i+1, time.Since(start), first, err, want)
					}
				}
				if first, _ := s.FirstUse(ctx, "jti-2", time.Minute); !first {
					t.Error("another key is not first")
				}
				time.Sleep(ttl + 50*time.Millisecond) // from after the first use
				if first, _ := s.FirstUse(ctx, "jti-1", time.Minute); !first {
					t.Error("key not forgotten after its ttl")
				}
				if first, _ := s.FirstUse(ctx, "jti-3", 0); !first {
					t.Error("zero ttl: not first")
				}
			})
			t.Run("key layout", func(t *testing.T) {
				s := newStore(t)
				mustSave(t, s, "k1", testRedisSession("alice", "sid1"), later())
				_, _ = s.FirstUse(ctx, "jti", time.Minute)
				_, _ = s.SealingKey(ctx)
				keys, _ := raw.Keys(ctx, "*").Result()
				want := []string{"{pliro:}s:k1", "{pliro:}sid:sid1", "{pliro:}sub:alice", "{pliro:}u:jti", "{pliro:}sealing-key"}
				if !sameStrings(keys, want) {
					t.Errorf("keys = %v; want %v", keys, want)
				}
				if ttl, _ := raw.PTTL(ctx, "{pliro:}sealing-key").Result(); ttl != -1 {
					t.Errorf("sealing key ttl = %s; want none", ttl)
				}
			})
			t.Run("key prefixes keep stores apart", func(t *testing.T) {
				s := newStore(t)
				other := newTestRedisStore(t, srv.addr, func(c *RedisStoreConfig) { c.KeyPrefix = "other:" })
				mustSave(t, s, "k1", testRedisSession("alice", "sid1"), later())
				if _, found := mustLoad(t, other, "k1"); found {
					t.Error("a store with another prefix sees the session")
				}
				if n, _ := other.DeleteBySubject(ctx, "alice"); n != 0 {
					t.Error("a store with another prefix deletes the session")
				}
			})
		})
	}
}

func sameStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, s := range a {
		seen[s]++
	}
	for _, s := range b {
		seen[s]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

// TestRedisStoreSignOutReachesEveryInstance: instance B holds a session in
// its local cache when instance A ends it (a sign-out, a back-channel
// logout). B must stop honouring it at once, not when its cache entry
// ages out: the cache TTL is raised to 10s here so that only pub/sub can
// pass the test.
func TestRedisStoreSignOutReachesEveryInstance(t *testing.T) {
	srv := startTestRedis(t)
	raw := rawRedis(t, srv.addr)
	ctx := context.Background()
	a := newTestRedisStore(t, srv.addr, nil)
	b := newTestRedisStore(t, srv.addr, nil)
	b.cache.ttl = 10 * time.Second
	waitRedisLive(t, a, 2*time.Second)
	waitRedisLive(t, b, 2*time.Second)
	later := time.Now().Add(time.Hour)

	// goneOnB waits until B no longer finds key and says how long it took.
	goneOnB := func(key string) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			if _, found := mustLoad(t, b, key); !found {
				return time.Since(start)
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s still found on B after 5s", key)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	// Pub/sub takes milliseconds; the bound is the product's promise (a
	// sign-out is effective within 1s), far below B's cache TTL, so that a
	// loaded machine does not fail the test and a lost message still does.
	const quick = time.Second

	// B caches what it reads: deleting the key behind the stores' backs
	// (no message) does not reach B.
	gen := b.cache.generation()
	mustSave(t, a, "k1", testRedisSession("alice", "sid1"), later)
	waitRedisInvalidation(t, b, gen) // else it could drop what B reads next
	if _, found := mustLoad(t, b, "k1"); !found {
		t.Fatal("B does not see the session A saved")
	}
	if err := raw.Del(ctx, a.sessionKey("k1")).Err(); err != nil {
		t.Fatal(err)
	}
	if _, found := mustLoad(t, b, "k1"); !found {
		t.Fatal("B did not cache the session (test premise)")
	}

	// A's Save announces the change: B reads the new value.
	changed := testRedisSession("alice", "sid1")
	changed.Plan = "premium-plus"
	mustSave(t, a, "k1", changed, later)
	start := time.Now()
	for {
		got, _ := mustLoad(t, b, "k1")
		if got != nil && got.Plan == "premium-plus" {
			break
		}
		if time.Since(start) > quick {
			t.Fatalf("B still has the old session after %s", quick)
		}
		time.Sleep(2 * time.Millisecond)
	}

	// Sign-out on A.
	if err := a.Delete(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if d := goneOnB("k1"); d > quick {
		t.Errorf("sign-out reached B after %s; want within %s", d, quick)
	} else {
		t.Logf("sign-out reached B after %s", d)
	}

	// Back-channel logout on A, by sid and by subject.
	mustSave(t, a, "k2", testRedisSession("bob", "sid2"), later)
	mustSave(t, a, "k3", testRedisSession("carol", "sid3"), later)
	mustLoad(t, b, "k2")
	mustLoad(t, b, "k3")
	if n, err := a.DeleteByProviderSID(ctx, "sid2", "bob"); n != 1 || err != nil {
		t.Fatalf("DeleteByProviderSID = %d, %v", n, err)
	}
	if d := goneOnB("k2"); d > quick {
		t.Errorf("back-channel logout by sid reached B after %s", d)
	}
	if n, err := a.DeleteBySubject(ctx, "carol"); n != 1 || err != nil {
		t.Fatalf("DeleteBySubject = %d, %v", n, err)
	}
	if d := goneOnB("k3"); d > quick {
		t.Errorf("logout by subject reached B after %s", d)
	}

	// "Not found" is not cached: a sign-in on A is seen on B at once.
	if _, found := mustLoad(t, b, "k4"); found {
		t.Fatal("k4 found before it was saved")
	}
	mustSave(t, a, "k4", testRedisSession("dave", "sid4"), later)
	if _, found := mustLoad(t, b, "k4"); !found {
		t.Error("B does not see a fresh sign-in on A at once")
	}
}

func TestRedisStoreSealingKeyShared(t *testing.T) {
	srv := startTestRedis(t)
	ctx := context.Background()
	a := newTestRedisStore(t, srv.addr, nil)
	b := newTestRedisStore(t, srv.addr, nil)
	other := newTestRedisStore(t, srv.addr, func(c *RedisStoreConfig) { c.KeyPrefix = "other:" })

	ka, err := a.SealingKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := b.SealingKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ka) != 32 || string(ka) != string(kb) {
		t.Fatalf("sealing keys differ or are not 32 bytes: %x %x", ka, kb)
	}
	if ko, _ := other.SealingKey(ctx); string(ko) == string(ka) {
		t.Error("another key prefix shares the sealing key")
	}
	// A sealer made from it opens what the other instance sealed.
	sa, _ := newSealer(ka)
	sb, _ := newSealer(kb)
	sealed := sa.seal("pliro_signin_x", []byte("state"))
	if got, err := sb.open("pliro_signin_x", sealed); err != nil || string(got) != "state" {
		t.Errorf("B cannot open what A sealed")
	}

	// Redis restarts empty: A writes its key back at the next check, and
	// an instance started afterwards gets that same key.
	srv.restart()
	a.sealRefresh = 0
	ka2, err := a.SealingKey(ctx)
	if err != nil {
		t.Fatalf("after restart: %v", err)
	}
	c := newTestRedisStore(t, srv.addr, nil)
	kc, err := c.SealingKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(ka2) != string(ka) || string(kc) != string(ka) {
		t.Error("instances disagree on the sealing key after Redis lost it")
	}
}

// TestRedisStoreRedisDown: with Redis gone every method fails fast with an
// error (the handler answers 503), requests do not pile goroutines up, and
// the same store works again once Redis is back.
func TestRedisStoreRedisDown(t *testing.T) {
	srv := startTestRedis(t)
	ctx := context.Background()
	s := newTestRedisStore(t, srv.addr, nil)
	later := time.Now().Add(time.Hour)
	mustSave(t, s, "k1", testRedisSession("alice", "sid1"), later)
	mustLoad(t, s, "k1")
	waitRedisLive(t, s, 2*time.Second)
	if _, err := s.SealingKey(ctx); err != nil {
		t.Fatal(err)
	}
	fresh := newTestRedisStore(t, srv.addr, nil) // has no sealing key yet

	runtime.GC()
	before := runtime.NumGoroutine()
	srv.stop()
	// What the subscriber does when it notices the outage; done here so the
	// test does not race it (a Load within local_cache_ttl may be served
	// from the cache).
	s.cache.flush()

	calls := map[string]func() error{
		"loading session": func() error { _, _, err := s.Load(ctx, "k1"); return err },
		"saving session": func() error {
			return s.Save(ctx, "k2", testRedisSession("bob", "sid2"), later)
		},
		"deleting session":                  func() error { return s.Delete(ctx, "k1") },
		"deleting sessions by provider sid": func() error { _, err := s.DeleteByProviderSID(ctx, "sid1", ""); return err },
		"deleting sessions by subject":      func() error { _, err := s.DeleteBySubject(ctx, "alice"); return err },
		"recording first use":               func() error { _, err := s.FirstUse(ctx, "jti", time.Minute); return err },
		"getting sealing key":               func() error { _, err := fresh.SealingKey(ctx); return err },
	}
	for prefix, call := range calls {
		start := time.Now()
		err := call()
		if err == nil {
			t.Errorf("%s: no error with Redis down", prefix)
			continue
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s took %s to fail; want < 3s", prefix, d)
		}
		if !strings.HasPrefix(err.Error(), prefix+": ") {
			t.Errorf("error %q; want it to start with %q", err, prefix)
		}
	}
	// An instance that has the sealing key keeps using it.
	if _, err := s.SealingKey(ctx); err != nil {
		t.Errorf("cached sealing key: %v", err)
	}

	// A burst of requests while Redis is down leaves no goroutines behind.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var slowest time.Duration
	for i := range 200 {
		wg.Go(func() {
			start := time.Now()
			_, _, err := s.Load(ctx, fmt.Sprintf("burst-%d", i))
			d := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			slowest = max(slowest, d)
			if err == nil {
				t.Error("Load succeeded with Redis down")
			}
		})
	}
	wg.Wait()
	if slowest > 3*time.Second {
		t.Errorf("slowest failing Load took %s", slowest)
	}
	// Goroutines that are on their way out may take a moment to end on a
	// loaded machine; 200 piled-up ones never do.
	var after int
	for settle := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		runtime.GC()
		after = runtime.NumGoroutine()
		if after <= before+5 || time.Now().After(settle) {
			break
		}
	}
	t.Logf("goroutines: %d before the outage, %d after 200 failing loads; slowest load %s", before, after, slowest)
	if after > before+5 {
		t.Errorf("goroutines grew from %d to %d while Redis was down", before, after)
	}

	// Redis returns (empty: nothing was persisted); the same store works.
	srv.restart()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := s.Save(ctx, "k3", testRedisSession("carol", "sid3"), later)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store did not recover within 15s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, found := mustLoad(t, s, "k3"); !found {
		t.Error("session saved after recovery not found")
	}
	waitRedisLive(t, s, 10*time.Second)
	if first, err := s.FirstUse(ctx, "jti", time.Minute); err != nil || !first {
		t.Errorf("FirstUse after recovery = %v, %v", first, err)
	}
}

// TestRedisStorePausedRedisKeepsSessions simulates an outage that loses no
// data (a stuck or failing-over Redis): calls fail fast while it lasts,
// and afterwards the sessions are all there.
func TestRedisStorePausedRedisKeepsSessions(t *testing.T) {
	srv := startTestRedis(t)
	ctx := context.Background()
	a := newTestRedisStore(t, srv.addr, func(c *RedisStoreConfig) { c.LocalCacheTTL = -1 })
	b := newTestRedisStore(t, srv.addr, nil)
	b.cache.ttl = 10 * time.Second // only an invalidation can make B forget k2 in time
	waitRedisLive(t, b, 2*time.Second)
	want := testRedisSession("alice", "sid1")
	mustSave(t, a, "k1", want, time.Now().Add(time.Hour))
	mustSave(t, a, "k2", testRedisSession("bob", "sid2"), time.Now().Add(time.Hour))

	srv.pause()
	start := time.Now()
	_, _, err := a.Load(ctx, "k1")
	d := time.Since(start)
	srv.resume()
	if err == nil {
		t.Fatal("Load succeeded while Redis was stopped")
	}
	if d > 3*time.Second {
		t.Errorf("Load took %s to fail; want < 3s", d)
	}
	t.Logf("Load failed after %s: %v", d, err)

	got, found := mustLoad(t, a, "k1")
	if !found {
		t.Fatal("session lost in the outage")
	}
	sameSession(t, got, want)
	// Invalidation still reaches B afterwards.
	waitRedisLive(t, b, 10*time.Second)
	mustLoad(t, b, "k2")
	if err := a.Delete(ctx, "k2"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, found := mustLoad(t, b, "k2"); !found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("B still finds k2 5s after the sign-out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRedisStoreSubscriberNoticesSilentOutage: a Redis that stops
// answering (no connection reset, as in a network partition) is noticed by
// the subscriber's ping, and the local cache is off until the subscription
// is back; a healthy but quiet subscription stays up.
func TestRedisStoreSubscriberNoticesSilentOutage(t *testing.T) {
	srv := startTestRedis(t)
	s := newTestRedisStore(t, srv.addr, nil)
	// A Redis that answers a ping later than pingEvery counts as gone: not
	// so short that a loaded machine is too slow for a healthy one.
	s.pingEvery = 250 * time.Millisecond
	waitRedisLive(t, s, 2*time.Second)
	time.Sleep(4 * s.pingEvery) // several quiet pings
	if !s.live.Load() {
		t.Fatal("a quiet, healthy subscription went down")
	}

	srv.pause()
	deadline := time.Now().Add(5 * time.Second)
	for s.live.Load() {
		if time.Now().After(deadline) {
			srv.resume()
			t.Fatal("subscriber did not notice that Redis stopped answering")
		}
		time.Sleep(5 * time.Millisecond)
	}
	srv.resume()
	waitRedisLive(t, s, 10*time.Second)
}

// TestRedisStoreConstructorDoesNoIO: Provision runs the constructor (also
// for caddy validate), so it must not touch the network.
func TestRedisStoreConstructorDoesNoIO(t *testing.T) {
	for _, addrs := range [][]string{{"127.0.0.1:1"}, {"127.0.0.1:1", "127.0.0.1:2"}} {
		start := time.Now()
		s, err := newRedisStore(RedisStoreConfig{Addresses: addrs}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("newRedisStore(%v) took %s", addrs, d)
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	}
}

// TestRedisStoreCloseStopsSubscriber: no goroutine outlives Close.
func TestRedisStoreCloseStopsSubscriber(t *testing.T) {
	srv := startTestRedis(t)
	runtime.GC()
	before := runtime.NumGoroutine()
	s, err := newRedisStore(RedisStoreConfig{Addresses: []string{srv.addr}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustSave(t, s, "k1", testRedisSession("alice", "sid1"), time.Now().Add(time.Hour))
	waitRedisLive(t, s, 2*time.Second)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Load(context.Background(), "k1"); err == nil {
		t.Error("Load after Close succeeded")
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+1 {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d before the store, %d after Close", before, runtime.NumGoroutine())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRedisStoreSessionSize records what a session costs in Redis.
func TestRedisStoreSessionSize(t *testing.T) {
	srv := startTestRedis(t)
	raw := rawRedis(t, srv.addr)
	s := newTestRedisStore(t, srv.addr, nil)
	sess := testRedisSession("8f14e45f-ceea-467a-9575-6e1c2b8b3a10", "b1946ac9-2c7e-4f2b-a8f3-0c8d5f1e6a77")
	data, _ := json.Marshal(sess)
	mustSave(t, s, "k1", sess, time.Now().Add(time.Hour))
	usage, err := raw.MemoryUsage(context.Background(), s.sessionKey("k1")).Result()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("session: %d bytes of JSON (id token %d), %d bytes in Redis", len(data), len(sess.IDToken), usage)
	if usage > 4096 {
		t.Errorf("a session takes %d bytes in Redis", usage)
	}
}

func TestRedisLocalCache(t *testing.T) {
	sess := &Session{Subject: "alice"}
	dl := time.Now().Add(time.Hour)

	// A ttl long enough that put and get fall within it on a loaded machine.
	const ttl = 500 * time.Millisecond
	c := newRedisLocalCache(ttl, 100)
	gen := c.generation()
	c.put("k", sess, dl, gen)
	if got, _, ok := c.get("k"); !ok || got != sess {
		t.Fatal("put then get: miss")
	}
	time.Sleep(ttl + 10*time.Millisecond)
	if _, _, ok := c.get("k"); ok {
		t.Error("entry outlived the ttl")
	}

	// A read that began before an invalidation must not cache its result.
	gen = c.generation()
	c.invalidate("k")
	c.put("k", sess, dl, gen)
	if _, _, ok := c.get("k"); ok {
		t.Error("a stale read was cached after an invalidation")
	}
	// ... nor one that began before a flush.
	gen = c.generation()
	c.flush()
	c.put("k2", sess, dl, gen)
	if _, _, ok := c.get("k2"); ok {
		t.Error("a stale read was cached after a flush")
	}
	// A read that began after the invalidation is cached.
	c.put("k", sess, dl, c.generation())
	if _, _, ok := c.get("k"); !ok {
		t.Error("a fresh read was not cached")
	}

	// The size stays bounded.
	c = newRedisLocalCache(time.Minute, 100)
	for i := range 1000 {
		c.put(strconv.Itoa(i), sess, dl, c.generation())
		if i%3 == 0 {
			c.invalidate(strconv.Itoa(i))
		}
	}
	if n := c.size(); n > 100 {
		t.Errorf("cache holds %d entries; max 100", n)
	}
}

func TestRedisStoreConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     RedisStoreConfig
		wantErr string
		check   func(t *testing.T, c RedisStoreConfig)
	}{
		{name: "single", cfg: RedisStoreConfig{Addresses: []string{"redis:6379"}}, check: func(t *testing.T, c RedisStoreConfig) {
			if c.KeyPrefix != "pliro:" || c.DialTimeout != caddy.Duration(2*time.Second) ||
				c.ReadTimeout != caddy.Duration(time.Second) || c.WriteTimeout != caddy.Duration(time.Second) ||
				c.LocalCacheTTL != caddy.Duration(500*time.Millisecond) {
				t.Errorf("defaults: %+v", c)
			}
		}},
		{name: "default port", cfg: RedisStoreConfig{Addresses: []string{"redis", "10.0.0.2", "[::1]"}}, check: func(t *testing.T, c RedisStoreConfig) {
			if !reflect.DeepEqual(c.Addresses, []string{"redis:6379", "10.0.0.2:6379", "[::1]:6379"}) {
				t.Errorf("addresses = %v", c.Addresses)
			}
		}},
		{name: "sentinel default port", cfg: RedisStoreConfig{Addresses: []string{"s1", "s2"}, MasterName: "mymaster", DB: 2}, check: func(t *testing.T, c RedisStoreConfig) {
			if !reflect.DeepEqual(c.Addresses, []string{"s1:26379", "s2:26379"}) {
				t.Errorf("addresses = %v", c.Addresses)
			}
		}},
		{name: "no addresses", cfg: RedisStoreConfig{}, wantErr: "addresses is required"},
		{name: "bare ipv6", cfg: RedisStoreConfig{Addresses: []string{"::1"}}, wantErr: "must be host:port"},
		{name: "bad port", cfg: RedisStoreConfig{Addresses: []string{"redis:99999"}}, wantErr: "invalid port"},
		{name: "db with cluster", cfg: RedisStoreConfig{Addresses: []string{"a:1", "b:1"}, DB: 1}, wantErr: "db must be 0"},
		{name: "db with forced cluster", cfg: RedisStoreConfig{Addresses: []string{"a:1"}, Cluster: true, DB: 1}, wantErr: "db must be 0"},
		{name: "negative db", cfg: RedisStoreConfig{Addresses: []string{"a:1"}, DB: -1}, wantErr: "negative"},
		{name: "cluster and sentinel", cfg: RedisStoreConfig{Addresses: []string{"a:1"}, Cluster: true, MasterName: "m"}, wantErr: "exclude each other"},
		{name: "sentinel password without sentinel", cfg: RedisStoreConfig{Addresses: []string{"a:1"}, SentinelPassword: "x"}, wantErr: "need master_name"},
		{name: "brace in prefix", cfg: RedisStoreConfig{Addresses: []string{"a:1"}, KeyPrefix: "{x}"}, wantErr: "braces"},
		{name: "server name without tls", cfg: RedisStoreConfig{Addresses: []string{"a:1"}, TLSServerName: "r"}, wantErr: "needs tls"},
		{name: "negative timeout", cfg: RedisStoreConfig{Addresses: []string{"a:1"}, ReadTimeout: -1}, wantErr: "must be positive"},
		{name: "cache too long", cfg: RedisStoreConfig{Addresses: []string{"a:1"}, LocalCacheTTL: caddy.Duration(2 * time.Second)}, wantErr: "at most 1s"},
		{name: "cache off", cfg: RedisStoreConfig{Addresses: []string{"a:1"}, LocalCacheTTL: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.cfg.withDefaults()
			err := c.validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if tt.check != nil {
					tt.check(t, c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v; want one containing %q", err, tt.wantErr)
			}
			if _, err := newRedisStore(tt.cfg, nil); err == nil {
				t.Error("newRedisStore accepted an invalid config")
			}
		})
	}
}

func TestRedisStoreUniversalOptions(t *testing.T) {
	c := RedisStoreConfig{
		Addresses: []string{"a:1"}, Cluster: true, Username: "u", Password: "p",
		TLS: true, TLSServerName: "redis.internal",
	}.withDefaults()
	o := c.universalOptions()
	if !o.IsClusterMode || o.Username != "u" || o.Password != "p" || o.MaxRetries != 1 || o.DialerRetries != 1 ||
		!o.ContextTimeoutEnabled || o.DialTimeout != 2*time.Second || o.ReadTimeout != time.Second {
		t.Errorf("options: %+v", o)
	}
	if o.TLSConfig == nil || o.TLSConfig.ServerName != "redis.internal" || o.TLSConfig.MinVersion != tls.VersionTLS12 {
		t.Errorf("tls: %+v", o.TLSConfig)
	}
	if o := (RedisStoreConfig{Addresses: []string{"a:1"}}).withDefaults().universalOptions(); o.TLSConfig != nil || o.IsClusterMode {
		t.Errorf("plain single server: %+v", o)
	}
}

func TestRedisStoreExpandPlaceholders(t *testing.T) {
	t.Setenv("PLIRO_TEST_REDIS_PASSWORD", "s3cret\n")
	t.Setenv("PLIRO_TEST_REDIS_ADDRESSES", "10.0.0.1:6379, 10.0.0.2:6379")
	c, err := RedisStoreConfig{
		Addresses: []string{"{env.PLIRO_TEST_REDIS_ADDRESSES}"},
		Password:  "{env.PLIRO_TEST_REDIS_PASSWORD}",
	}.expandPlaceholders(caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	if c.Password != "s3cret" || !reflect.DeepEqual(c.Addresses, []string{"10.0.0.1:6379", "10.0.0.2:6379"}) {
		t.Errorf("expanded: %+v", c)
	}
}

func TestParseRedisStore(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    *RedisStoreConfig
		wantErr string
	}{
		{
			name:  "addresses on the line",
			input: `store redis 10.0.0.1:6379 10.0.0.2:6379`,
			want:  &RedisStoreConfig{Addresses: []string{"10.0.0.1:6379", "10.0.0.2:6379"}},
		},
		{
			name: "full block",
			input: `store redis {
				addresses         s1:26379 s2:26379
				master_name       mymaster
				username          caddy
				password          {env.REDIS_PASSWORD}
				sentinel_username sentinel
				sentinel_password {env.SENTINEL_PASSWORD}
				db                3
				key_prefix        news:
				tls
				tls_server_name   redis.internal
				dial_timeout      3s
				read_timeout      500ms
				write_timeout     750ms
				local_cache_ttl   250ms
			}`,
			want: &RedisStoreConfig{
				Addresses: []string{"s1:26379", "s2:26379"}, MasterName: "mymaster",
				Username: "caddy", Password: "{env.REDIS_PASSWORD}",
				SentinelUsername: "sentinel", SentinelPassword: "{env.SENTINEL_PASSWORD}",
				DB: 3, KeyPrefix: "news:", TLS: true, TLSServerName: "redis.internal",
				DialTimeout: caddy.Duration(3 * time.Second), ReadTimeout: caddy.Duration(500 * time.Millisecond),
				WriteTimeout: caddy.Duration(750 * time.Millisecond), LocalCacheTTL: caddy.Duration(250 * time.Millisecond),
			},
		},
		{
			name:  "cluster with one seed",
			input: "store redis redis-cluster:6379 {\n cluster \n}",
			want:  &RedisStoreConfig{Addresses: []string{"redis-cluster:6379"}, Cluster: true},
		},
		{name: "cache off", input: "store redis r:6379 {\n local_cache_ttl off \n}", want: &RedisStoreConfig{Addresses: []string{"r:6379"}, LocalCacheTTL: -1}},
		{name: "cache 0 is off", input: "store redis r:6379 {\n local_cache_ttl 0 \n}", want: &RedisStoreConfig{Addresses: []string{"r:6379"}, LocalCacheTTL: -1}},
		{name: "no addresses", input: "store redis", wantErr: "addresses is required"},
		{name: "no addresses in block", input: "store redis {\n db 1 \n}", wantErr: "addresses is required"},
		{name: "addresses twice", input: "store redis a:1 {\n addresses b:1 \n}", wantErr: "duplicate subdirective 'addresses'"},
		{name: "duplicate", input: "store redis a:1 {\n password x \n password y \n}", wantErr: "duplicate subdirective 'password'"},
		{name: "unknown", input: "store redis a:1 {\n pasword x \n}", wantErr: "unrecognized subdirective 'pasword'"},
		{name: "missing argument", input: "store redis a:1 {\n password \n}", wantErr: "wrong argument count"},
		{name: "extra argument", input: "store redis a:1 {\n key_prefix a b \n}", wantErr: "wrong argument count"},
		{name: "flag with argument", input: "store redis a:1 {\n tls on \n}", wantErr: "wrong argument count"},
		{name: "bad duration", input: "store redis a:1 {\n read_timeout soon \n}", wantErr: "bad duration"},
		{name: "negative duration", input: "store redis a:1 {\n dial_timeout -1s \n}", wantErr: "must not be negative"},
		{name: "bad db", input: "store redis a:1 {\n db one \n}", wantErr: "database number"},
		{name: "negative db", input: "store redis a:1 {\n db -1 \n}", wantErr: "database number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := caddyfile.NewTestDispenser(tt.input)
			d.Next()    // store
			d.NextArg() // redis
			got, err := parseRedisStore(d)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v; want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestParseRedisStoreInsideBlock: the store block nests in the pliro block
// and parsing goes on with the next subdirective after it.
func TestParseRedisStoreInsideBlock(t *testing.T) {
	d := caddyfile.NewTestDispenser(`pliro {
		store redis {
			addresses r:6379
			key_prefix site:
		}
		issuer https://news.plirotest.page
	}`)
	d.Next() // pliro
	var cfg *RedisStoreConfig
	var after []string
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "store":
			if !d.NextArg() || d.Val() != "redis" {
				t.Fatalf("want redis, got %q", d.Val())
			}
			var err error
			if cfg, err = parseRedisStore(d); err != nil {
				t.Fatal(err)
			}
		default:
			after = append(after, d.Val())
			after = append(after, d.RemainingArgs()...)
		}
	}
	if cfg == nil || cfg.KeyPrefix != "site:" || !reflect.DeepEqual(cfg.Addresses, []string{"r:6379"}) {
		t.Errorf("cfg = %+v", cfg)
	}
	if !reflect.DeepEqual(after, []string{"issuer", "https://news.plirotest.page"}) {
		t.Errorf("after the store block: %v", after)
	}
}

// BenchmarkRedisStoreLoad measures a session read: a round trip to a local
// Redis without the cache, a map lookup with it.
func BenchmarkRedisStoreLoad(b *testing.B) {
	srv := startTestRedis(b)
	for _, bc := range []struct {
		name string
		ttl  caddy.Duration
	}{{"no_cache", -1}, {"cache", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			s := newTestRedisStore(b, srv.addr, func(c *RedisStoreConfig) { c.LocalCacheTTL = bc.ttl })
			ctx := context.Background()
			if err := s.Save(ctx, "k1", testRedisSession("alice", "sid1"), time.Now().Add(time.Hour)); err != nil {
				b.Fatal(err)
			}
			if s.cache != nil {
				waitRedisLive(b, s, 2*time.Second)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, found, err := s.Load(ctx, "k1"); !found || err != nil {
					b.Fatalf("Load: %v, %v", found, err)
				}
			}
		})
	}
}

// go-redis's own lines (a failed dial, from its pool) go to Caddy's log at
// debug level, not to stderr in go-redis's format.
func TestRedisLibraryLogsGoToZap(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	redisLogger{zap.New(core)}.Printf(context.Background(), "redis: connection pool: failed to dial after %d attempts: %v", 1, errors.New("connection refused"))
	entries := logs.All()
	if len(entries) != 1 || entries[0].Level != zap.DebugLevel {
		t.Fatalf("entries %+v, want one at debug level", entries)
	}
	if got := entries[0].ContextMap()["message"]; got != "redis: connection pool: failed to dial after 1 attempts: connection refused" {
		t.Errorf("message %q", got)
	}

	core, logs = observer.New(zap.InfoLevel)
	redisLogger{zap.New(core)}.Printf(context.Background(), "x")
	if logs.Len() != 0 {
		t.Errorf("logged below the configured level")
	}
}

// A visit that moves a session's deadline moves its index sets' expiry too:
// an index that expired before its session would hide the session from a
// back-channel logout.
func TestRedisTouchExtendsIndexes(t *testing.T) {
	srv := startTestRedis(t)
	raw := rawRedis(t, srv.addr)
	ctx := context.Background()
	s := newTestRedisStore(t, srv.addr, nil)
	mustSave(t, s, "k1", testRedisSession("alice", "sid1"), time.Now().Add(time.Minute))
	later := time.Now().Add(48 * time.Hour)
	if ok, err := s.Touch(ctx, "k1", time.Now(), later); err != nil || !ok {
		t.Fatalf("Touch: %v %v", ok, err)
	}
	for _, k := range []string{s.sessionKey("k1"), s.sidKey("sid1"), s.subKey("alice")} {
		if ttl, _ := raw.PTTL(ctx, k).Result(); ttl < 47*time.Hour {
			t.Errorf("%s expires in %v after a visit that extended the session to 48 h", k, ttl)
		}
	}
	if n, err := s.DeleteByProviderSID(ctx, "sid1", ""); err != nil || n != 1 {
		t.Errorf("DeleteByProviderSID after Touch = %d, %v; want 1", n, err)
	}
}

// The same, end to end: a process whose Redis store cannot dial writes no
// line of go-redis's own format ("redis: <date> pool.go:...") to stderr. The
// test runs itself as that process, so that go-redis's process-wide logger
// starts as it does in Caddy.
func TestRedisDialErrorsStayOffStderr(t *testing.T) {
	if os.Getenv("PLIRO_REDIS_STDERR_CHILD") == "1" {
		s, err := newRedisStore(RedisStoreConfig{Addresses: []string{"127.0.0.1:1"}, tenant: "t"}, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for range 3 {
			_, _, _ = s.Load(context.Background(), "k")
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestRedisDialErrorsStayOffStderr$", "-test.count=1")
	cmd.Env = append(os.Environ(), "PLIRO_REDIS_STDERR_CHILD=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v\n%s", err, stderr.String())
	}
	for _, line := range strings.Split(stderr.String(), "\n") {
		if strings.HasPrefix(line, "redis: ") {
			t.Fatalf("go-redis wrote to stderr: %q", line)
		}
	}
}
