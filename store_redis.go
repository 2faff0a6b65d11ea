package pliro

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// RedisStoreConfig keeps sessions in Redis, so that every Caddy instance of
// a cluster sees the same sessions: a customer who signs in through one
// instance is signed in on all of them, and a sign-out or a back-channel
// logout handled by any instance ends the session everywhere within a
// second. The key that seals sign-in cookies is kept there too, so a sign-in
// started on one instance can finish on another.
//
// One address is a single Redis server; several are the seed nodes of a
// Redis Cluster; with master_name they are Redis Sentinels. Redis 6 or
// later (or Valkey) is needed.
//
// Every key of one store carries the hash tag {<key_prefix>}, so in a Redis
// Cluster they all live in one hash slot, on one shard: that is what lets
// each change of a session and its indexes be one atomic script. A site's
// sessions are small (about 1.5 KB each), so one shard holds millions; give
// each site its own key_prefix to spread several sites over the shards.
type RedisStoreConfig struct {
	// Addresses are host:port pairs: one Redis server, the seed nodes of a
	// Redis Cluster (more than one address, or cluster), or the sentinels
	// (with master_name). A missing port is 6379 (26379 for sentinels).
	// Required.
	Addresses []string `json:"addresses,omitempty"`
	// Cluster forces Redis Cluster mode with a single seed address.
	// Default: a cluster when more than one address is given.
	Cluster bool `json:"cluster,omitempty"`
	// MasterName is the name of the master that the sentinels at Addresses
	// watch (Redis Sentinel). Default: no sentinels.
	MasterName string `json:"master_name,omitempty"`
	// Username and Password authenticate to Redis (ACL user, or the
	// requirepass password with no username). Give the password as
	// {env.REDIS_PASSWORD} or {file./path}: the handler expands
	// placeholders at provision time, never in the adapted config.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// SentinelUsername and SentinelPassword authenticate to the sentinels
	// when they need it. Placeholders as for Password.
	SentinelUsername string `json:"sentinel_username,omitempty"`
	SentinelPassword string `json:"sentinel_password,omitempty"`
	// DB is the database number. Must be 0 with a Redis Cluster. Default: 0.
	DB int `json:"db,omitempty"`
	// KeyPrefix starts every key and the invalidation channel; instances
	// share sessions when they share the Redis and the prefix. It must not
	// contain braces or spaces. Default: pliro:
	KeyPrefix string `json:"key_prefix,omitempty"`
	// TLS connects to Redis over TLS (1.2 or later), checking the server's
	// certificate against the system's roots. Default: off.
	TLS bool `json:"tls,omitempty"`
	// TLSServerName is the name the certificate must carry, when it is not
	// the host of the address. Needs tls.
	TLSServerName string `json:"tls_server_name,omitempty"`
	// DialTimeout bounds connecting to Redis. Default: 2s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`
	// ReadTimeout bounds waiting for a reply. Default: 1s.
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`
	// WriteTimeout bounds sending a command. Default: 1s.
	//
	// A Redis outage must not hold customers' requests: every store call
	// gives up after dial_timeout + read_timeout (3s by default) and the
	// request fails with 503; it works again as soon as Redis is back.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`
	// LocalCacheTTL is how long an instance may reuse a session it read
	// from Redis without asking again. Every change of a session is also
	// announced on the channel <key_prefix>invalidate, and each instance
	// drops its copy at once; the TTL bounds staleness should a message be
	// lost. At most 1s. A negative value turns the cache off. Default: 500ms.
	LocalCacheTTL caddy.Duration `json:"local_cache_ttl,omitempty"`

	// tenant separates the keys of different issuers and clients that share
	// one Redis and key_prefix; set by the handler, never configured.
	tenant string
}

// Defaults and limits of the Redis store.
const (
	defaultRedisKeyPrefix     = "pliro:"
	defaultRedisPort          = "6379"
	defaultRedisSentinelPort  = "26379"
	defaultRedisDialTimeout   = 2 * time.Second
	defaultRedisReadTimeout   = time.Second
	defaultRedisWriteTimeout  = time.Second
	defaultRedisLocalCacheTTL = 500 * time.Millisecond
	// maxRedisLocalCacheTTL keeps the promise that a sign-out is effective
	// on every instance within a second, even if pub/sub fails.
	maxRedisLocalCacheTTL = time.Second
	// redisLocalCacheMaxEntries bounds the local cache's memory.
	redisLocalCacheMaxEntries = 100_000
	// redisIndexSlack keeps an index set alive a little longer than the
	// sessions it lists, against clock skew between Caddy and Redis.
	redisIndexSlack = time.Minute
	// redisSealingKeyRefresh is how often a cached sealing key is checked
	// against Redis (and written back if Redis lost it).
	redisSealingKeyRefresh = time.Minute
	// redisSubscriberPing is how long the subscriber waits in silence
	// before it pings; a ping without answer ends the subscription.
	redisSubscriberPing       = 10 * time.Second
	redisSubscriberMinBackoff = 100 * time.Millisecond
	redisSubscriberMaxBackoff = 2 * time.Second
	redisClientName           = "caddy-pliro"
)

// withDefaults returns c with every default filled in and the addresses
// completed with the default port.
func (c RedisStoreConfig) withDefaults() RedisStoreConfig {
	setDefault(&c.KeyPrefix, defaultRedisKeyPrefix)
	setDefault(&c.DialTimeout, caddy.Duration(defaultRedisDialTimeout))
	setDefault(&c.ReadTimeout, caddy.Duration(defaultRedisReadTimeout))
	setDefault(&c.WriteTimeout, caddy.Duration(defaultRedisWriteTimeout))
	setDefault(&c.LocalCacheTTL, caddy.Duration(defaultRedisLocalCacheTTL))
	port := defaultRedisPort
	if c.MasterName != "" {
		port = defaultRedisSentinelPort
	}
	addrs := make([]string, len(c.Addresses))
	for i, a := range c.Addresses {
		addrs[i] = withDefaultPort(a, port)
	}
	c.Addresses = addrs
	return c
}

// withDefaultPort completes a host without port (name, IPv4 or [IPv6]).
// Anything else is left for validate to judge.
func withDefaultPort(addr, port string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil || addr == "" {
		return addr
	}
	if strings.HasPrefix(addr, "[") && strings.HasSuffix(addr, "]") {
		return net.JoinHostPort(addr[1:len(addr)-1], port)
	}
	if !strings.Contains(addr, ":") {
		return net.JoinHostPort(addr, port)
	}
	return addr
}

// clusterMode reports whether c names a Redis Cluster.
func (c RedisStoreConfig) clusterMode() bool {
	return c.MasterName == "" && (c.Cluster || len(c.Addresses) > 1)
}

// validate checks a config that has its defaults. It does no I/O.
func (c RedisStoreConfig) validate() error {
	if len(c.Addresses) == 0 {
		return errors.New("redis: addresses is required: host:port of the Redis server, of the cluster's nodes or of the sentinels")
	}
	for _, a := range c.Addresses {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			return fmt.Errorf("redis: address %q must be host:port", a)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("redis: address %q has an invalid port", a)
		}
	}
	if c.Cluster && c.MasterName != "" {
		return errors.New("redis: cluster and master_name exclude each other")
	}
	if c.DB < 0 {
		return fmt.Errorf("redis: db must not be negative, not %d", c.DB)
	}
	if c.DB != 0 && c.clusterMode() {
		return errors.New("redis: db must be 0 with a Redis Cluster (several addresses or cluster): a cluster has only database 0")
	}
	if (c.SentinelUsername != "" || c.SentinelPassword != "") && c.MasterName == "" {
		return errors.New("redis: sentinel_username and sentinel_password need master_name")
	}
	if strings.ContainsAny(c.KeyPrefix, "{} \t\r\n") {
		return fmt.Errorf("redis: key_prefix %q must not contain braces or spaces", c.KeyPrefix)
	}
	if c.TLSServerName != "" && !c.TLS {
		return errors.New("redis: tls_server_name needs tls")
	}
	if c.DialTimeout <= 0 || c.ReadTimeout <= 0 || c.WriteTimeout <= 0 {
		return errors.New("redis: dial_timeout, read_timeout and write_timeout must be positive")
	}
	if time.Duration(c.LocalCacheTTL) > maxRedisLocalCacheTTL {
		return fmt.Errorf("redis: local_cache_ttl must be at most %s, so that a sign-out reaches every instance within a second, not %s",
			maxRedisLocalCacheTTL, time.Duration(c.LocalCacheTTL))
	}
	return nil
}

// expandPlaceholders returns c with {env.*} and {file.*} placeholders
// expanded in the addresses, the credentials and the names: the handler's
// Provision calls it before newRedisStore.
func (c RedisStoreConfig) expandPlaceholders(repl *caddy.Replacer) (RedisStoreConfig, error) {
	fields := map[string]*string{
		"username":          &c.Username,
		"password":          &c.Password,
		"sentinel_username": &c.SentinelUsername,
		"sentinel_password": &c.SentinelPassword,
		"master_name":       &c.MasterName,
		"tls_server_name":   &c.TLSServerName,
	}
	for name, f := range fields {
		v, err := repl.ReplaceOrErr(*f, true, true)
		if err != nil {
			return c, fmt.Errorf("expanding redis %s: %w", name, err)
		}
		*f = strings.TrimSpace(v)
	}
	addrs := make([]string, 0, len(c.Addresses))
	for _, a := range c.Addresses {
		v, err := repl.ReplaceOrErr(a, true, true)
		if err != nil {
			return c, fmt.Errorf("expanding redis addresses: %w", err)
		}
		// One placeholder may hold several addresses, e.g.
		// REDIS_ADDRESSES="10.0.0.1:6379 10.0.0.2:6379".
		addrs = append(addrs, strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' })...)
	}
	c.Addresses = addrs
	return c, nil
}

// universalOptions maps the config (with defaults) to go-redis options.
// Retries are few and timeouts short: a failing Redis makes a request fail
// quickly with 503 instead of piling requests up.
func (c RedisStoreConfig) universalOptions() *redis.UniversalOptions {
	opts := &redis.UniversalOptions{
		Addrs:            c.Addresses,
		ClientName:       redisClientName,
		DB:               c.DB,
		Username:         c.Username,
		Password:         c.Password,
		SentinelUsername: c.SentinelUsername,
		SentinelPassword: c.SentinelPassword,
		MasterName:       c.MasterName,
		IsClusterMode:    c.Cluster && c.MasterName == "",
		DialTimeout:      time.Duration(c.DialTimeout),
		ReadTimeout:      time.Duration(c.ReadTimeout),
		WriteTimeout:     time.Duration(c.WriteTimeout),
		// The request's context (client gone, deadline) ends a call too.
		ContextTimeoutEnabled: true,
		// One retry rides over a connection that Redis closed while it was
		// idle (a restart, a failover); more would only hold requests.
		MaxRetries:    1,
		DialerRetries: 1,
	}
	if c.TLS {
		opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName}
	}
	return opts
}

// redisStore is the Store that keeps sessions in Redis. Layout, with
// base = "{<key_prefix>}" (one hash tag for all keys, see RedisStoreConfig):
//
//	<base>s:<key>       hash: data (the session as JSON), sid, sub, dl (deadline, unix ms),
//	                    seen (the last visit, unix ms, when later than data's); expires at dl
//	<base>sid:<sid>     set of the session keys that carry Pliro's sid
//	<base>sub:<sub>     set of the session keys of one customer
//	<base>u:<key>       replay cache entry of FirstUse, with its ttl
//	<base>ended-sid:<sid>  when Pliro ended its session sid (unix ms), with a ttl
//	<base>sealing-key   the 32-byte key that seals sign-in cookies, no expiry
//
// Index sets expire with their longest-living member (plus a minute);
// entries of sessions that expired are removed when an index is read.
// Every write of a session and its indexes is one Lua script, so they never
// disagree, and the script publishes the session key on <key_prefix>invalidate
// in the same step.
type redisStore struct {
	client    redis.UniversalClient
	logger    *zap.Logger
	base      string // "{<key_prefix>}"
	channel   string // "<key_prefix>invalidate"
	opTimeout time.Duration

	cache     *redisLocalCache // nil when the local cache is off
	live      atomic.Bool      // the invalidation subscription is up: the cache may be used
	pingEvery time.Duration    // the subscriber's silence before a ping

	ctx      context.Context // ends at Close; the subscriber runs under it
	cancel   context.CancelFunc
	subStart sync.Once
	subMu    sync.Mutex
	closed   bool
	pubsub   *redis.PubSub
	wg       sync.WaitGroup

	closeOnce sync.Once
	closeErr  error

	sealMu      sync.Mutex
	sealKey     []byte
	sealChecked time.Time
	sealRefresh time.Duration
}

// newRedisStore makes a Redis store from cfg, whose placeholders the caller
// has expanded. It does no network I/O: Redis is contacted on first use, so
// it is safe in Provision.
func newRedisStore(cfg RedisStoreConfig, logger *zap.Logger) (*redisStore, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	routeRedisLogs.Do(func() { redis.SetLogger(redisLogger{}) })
	ctx, cancel := context.WithCancel(context.Background())
	s := &redisStore{
		client:      redis.NewUniversalClient(cfg.universalOptions()),
		logger:      logger,
		base:        "{" + cfg.KeyPrefix + "}" + cfg.tenant,
		channel:     cfg.KeyPrefix + "invalidate",
		opTimeout:   time.Duration(cfg.DialTimeout) + time.Duration(cfg.ReadTimeout),
		ctx:         ctx,
		cancel:      cancel,
		sealRefresh: redisSealingKeyRefresh,
		pingEvery:   redisSubscriberPing,
	}
	if ttl := time.Duration(cfg.LocalCacheTTL); ttl > 0 {
		s.cache = newRedisLocalCache(ttl, redisLocalCacheMaxEntries)
	}
	return s, nil
}

// routeRedisLogs sends go-redis's own log lines (one per failed dial, from
// its connection pool) to Caddy's log instead of stderr, where they would
// break Caddy's structured output. go-redis has one logger per process.
var routeRedisLogs sync.Once

// redisLogger writes go-redis's log lines at debug level: the store's own
// errors already report an outage, once per failed operation. Without a
// logger of its own (the one set process-wide), it writes to Caddy's
// default log as it is at the time of the line, which a reload may change.
type redisLogger struct{ logger *zap.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	logger := l.logger
	if logger == nil {
		logger = caddy.Log().Named("redis")
	}
	if ce := logger.Check(zap.DebugLevel, "go-redis"); ce != nil {
		ce.Write(zap.String("message", fmt.Sprintf(format, v...)))
	}
}

// Close stops the subscriber and closes the connections. Calls after the
// first do nothing.
func (s *redisStore) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.subMu.Lock()
		s.closed = true
		ps := s.pubsub
		s.subMu.Unlock()
		if ps != nil {
			_ = ps.Close() // unblocks the subscriber's read
		}
		s.wg.Wait()
		s.closeErr = s.client.Close()
	})
	return s.closeErr
}

// Destruct closes the store, so that it can live in a caddy.UsagePool.
func (s *redisStore) Destruct() error { return s.Close() }

func (s *redisStore) sessionKey(key string) string  { return s.base + "s:" + key }
func (s *redisStore) sidKey(sid string) string      { return s.base + "sid:" + sid }
func (s *redisStore) subKey(sub string) string      { return s.base + "sub:" + sub }
func (s *redisStore) endedSIDKey(sid string) string { return s.base + "ended-sid:" + sid }

// op bounds one store call, whatever the caller's context allows.
func (s *redisStore) op(ctx context.Context) (context.Context, context.CancelFunc) {
	s.startSubscriber()
	return context.WithTimeout(ctx, s.opTimeout)
}

// countSessions counts the session keys with SCAN: O(sessions), for the
// admin API only, never on a request path.
func (s *redisStore) countSessions(r *http.Request) (int, error) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	var n atomic.Int64
	count := func(ctx context.Context, c redis.UniversalClient) error {
		iter := c.Scan(ctx, 0, s.base+"s:*", 1000).Iterator()
		for iter.Next(ctx) {
			n.Add(1)
		}
		return iter.Err()
	}
	var err error
	if cluster, ok := s.client.(*redis.ClusterClient); ok {
		err = cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return count(ctx, c) })
	} else {
		err = count(ctx, s.client)
	}
	if err != nil {
		return 0, fmt.Errorf("counting sessions: %w", err)
	}
	return int(n.Load()), nil
}

func (s *redisStore) Load(ctx context.Context, key string) (*Session, bool, error) {
	useCache := s.cache != nil && s.live.Load()
	var gen uint64
	if useCache {
		if sess, deadline, ok := s.cache.get(key); ok {
			if !now().Before(deadline) {
				return nil, false, nil
			}
			return sess, true, nil
		}
		gen = s.cache.generation()
	}
	ctx, cancel := s.op(ctx)
	defer cancel()
	vals, err := s.client.HMGet(ctx, s.sessionKey(key), "data", "dl", "seen").Result()
	if err != nil {
		return nil, false, fmt.Errorf("loading session: %w", err)
	}
	data, ok := vals[0].(string)
	if !ok {
		return nil, false, nil
	}
	dlField, _ := vals[1].(string)
	ms, err := strconv.ParseInt(dlField, 10, 64)
	if err != nil {
		s.logger.Warn("ignoring unreadable session in redis", zap.String("field", "dl"), zap.Error(err))
		return nil, false, nil
	}
	deadline := time.UnixMilli(ms)
	if !now().Before(deadline) {
		return nil, false, nil
	}
	sess := new(Session)
	if err := json.Unmarshal([]byte(data), sess); err != nil {
		// A value this version cannot read (written by another version,
		// or damaged) is no session: the customer signs in again rather
		// than seeing 503 until the cookie goes.
		s.logger.Warn("ignoring unreadable session in redis", zap.String("field", "data"), zap.Error(err))
		return nil, false, nil
	}
	// Visits are written apart from the session (Touch).
	if seenField, ok := vals[2].(string); ok {
		if ms, err := strconv.ParseInt(seenField, 10, 64); err == nil {
			if seen := time.UnixMilli(ms); seen.After(sess.LastSeen) {
				sess.LastSeen = seen
			}
		}
	}
	if useCache {
		s.cache.put(key, sess, deadline, gen)
	}
	return sess, true, nil
}

func (s *redisStore) Save(ctx context.Context, key string, sess *Session, deadline time.Time) error {
	_, err := s.save(ctx, key, sess, deadline, false)
	return err
}

func (s *redisStore) Replace(ctx context.Context, key string, sess *Session, deadline time.Time) (bool, error) {
	return s.save(ctx, key, sess, deadline, true)
}

// save writes the session; with onlyIfPresent, only over one that exists.
func (s *redisStore) save(ctx context.Context, key string, sess *Session, deadline time.Time, onlyIfPresent bool) (bool, error) {
	if sess == nil {
		return false, errors.New("saving session: nil session")
	}
	t := now()
	if !deadline.After(t) {
		// Already over: the same as ending it.
		if err := s.Delete(ctx, key); err != nil {
			return false, fmt.Errorf("saving session: %w", err)
		}
		return false, nil
	}
	data, err := json.Marshal(sess)
	if err != nil {
		return false, fmt.Errorf("saving session: encoding: %w", err)
	}
	ctx, cancel := s.op(ctx)
	defer cancel()
	defer s.invalidateLocal(key)
	indexTTL := deadline.Sub(t) + redisIndexSlack
	mustExist := "0"
	if onlyIfPresent {
		mustExist = "1"
	}
	saved, err := redisSaveScript.Run(ctx, s.client,
		[]string{s.sessionKey(key), s.sidKey(sess.ProviderSID), s.subKey(sess.Subject)},
		key, data, sess.ProviderSID, sess.Subject, deadline.UnixMilli(), indexTTL.Milliseconds(), s.base, s.channel, mustExist,
	).Int()
	if err != nil {
		return false, fmt.Errorf("saving session: %w", err)
	}
	return saved == 1, nil
}

// Touch writes the visit into the session's own field, not into its data,
// so it never overwrites claims another instance refreshed meanwhile.
func (s *redisStore) Touch(ctx context.Context, key string, seen, deadline time.Time) (bool, error) {
	t := now()
	if !deadline.After(t) {
		if err := s.Delete(ctx, key); err != nil {
			return false, fmt.Errorf("extending session: %w", err)
		}
		return false, nil
	}
	ctx, cancel := s.op(ctx)
	defer cancel()
	defer s.invalidateLocal(key)
	indexTTL := deadline.Sub(t) + redisIndexSlack
	touched, err := redisTouchScript.Run(ctx, s.client, []string{s.sessionKey(key)},
		key, seen.UnixMilli(), deadline.UnixMilli(), indexTTL.Milliseconds(), s.base, s.channel,
	).Int()
	if err != nil {
		return false, fmt.Errorf("extending session: %w", err)
	}
	return touched == 1, nil
}

func (s *redisStore) Delete(ctx context.Context, key string) error {
	ctx, cancel := s.op(ctx)
	defer cancel()
	defer s.invalidateLocal(key)
	err := redisDeleteScript.Run(ctx, s.client, []string{s.sessionKey(key)}, key, s.base, s.channel).Err()
	if err != nil {
		return fmt.Errorf("deleting session: %w", err)
	}
	return nil
}

func (s *redisStore) DeleteByProviderSID(ctx context.Context, sid, subject string) (int, error) {
	if sid == "" {
		return 0, nil
	}
	n, err := s.deleteByIndex(ctx, s.sidKey(sid), "sid", sid, subject)
	if err != nil {
		return n, fmt.Errorf("deleting sessions by provider sid: %w", err)
	}
	return n, nil
}

func (s *redisStore) DeleteBySubject(ctx context.Context, subject string) (int, error) {
	if subject == "" {
		return 0, nil
	}
	n, err := s.deleteByIndex(ctx, s.subKey(subject), "sub", subject, "")
	if err != nil {
		return n, fmt.Errorf("deleting sessions by subject: %w", err)
	}
	return n, nil
}

// deleteByIndex ends the sessions listed in one index set whose field
// still has value (and whose subject is subject, when not empty). Its cost
// grows with the length of that set only.
func (s *redisStore) deleteByIndex(ctx context.Context, index, field, value, subject string) (int, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	keys, err := redisDeleteByIndexScript.Run(ctx, s.client, []string{index},
		field, value, subject, s.base, s.channel).StringSlice()
	for _, k := range keys {
		s.invalidateLocal(k)
	}
	if err != nil {
		return 0, err
	}
	return len(keys), nil
}

func (s *redisStore) FirstUse(ctx context.Context, key string, ttl time.Duration) (bool, error) {
	if ttl <= 0 {
		return true, nil // remembered for no time at all
	}
	ctx, cancel := s.op(ctx)
	defer cancel()
	first, err := s.client.SetNX(ctx, s.base+"u:"+key, 1, ttl).Result()
	if err != nil {
		return false, fmt.Errorf("recording first use: %w", err)
	}
	return first, nil
}

func (s *redisStore) Forget(ctx context.Context, key string) error {
	ctx, cancel := s.op(ctx)
	defer cancel()
	return s.client.Del(ctx, s.base+"u:"+key).Err()
}

func (s *redisStore) MarkSIDEnded(ctx context.Context, sid string, at time.Time, ttl time.Duration) error {
	ctx, cancel := s.op(ctx)
	defer cancel()
	if err := redisMarkSIDScript.Run(ctx, s.client, []string{s.endedSIDKey(sid)}, at.UnixMilli(), ttl.Milliseconds()).Err(); err != nil {
		return fmt.Errorf("marking Pliro session ended: %w", err)
	}
	return nil
}

func (s *redisStore) SIDEndedAt(ctx context.Context, sid string) (time.Time, bool, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	ms, err := s.client.Get(ctx, s.endedSIDKey(sid)).Int64()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("reading ended Pliro session: %w", err)
	}
	return time.UnixMilli(ms), true, nil
}

// SealingKey returns the 32-byte key that seals sign-in cookies, the same
// on every instance that uses this Redis and key prefix: the first instance
// to ask stores a random key (SET NX, no expiry) and everyone reads that
// one. The key is cached and checked against Redis once a minute; if Redis
// lost it (a restart without persistence), the cached key is written back,
// so instances keep agreeing. While Redis is down a cached key is returned
// without error. To rotate the key, delete <base>sealing-key and restart
// every instance: sign-ins in progress then start over.
func (s *redisStore) SealingKey(ctx context.Context) ([]byte, error) {
	s.sealMu.Lock()
	defer s.sealMu.Unlock()
	if s.sealKey != nil && time.Since(s.sealChecked) < s.sealRefresh {
		return bytes.Clone(s.sealKey), nil
	}
	candidate := s.sealKey
	if candidate == nil {
		candidate = make([]byte, 32)
		_, _ = rand.Read(candidate)
	}
	ctx, cancel := s.op(ctx)
	defer cancel()
	got, err := redisSealingKeyScript.Run(ctx, s.client, []string{s.base + "sealing-key"}, candidate).Text()
	if err == nil && len(got) != 32 {
		err = fmt.Errorf("the key in redis has %d bytes, want 32", len(got))
	}
	if err != nil {
		if s.sealKey != nil {
			// Keep using the key we have; ask Redis again in a few seconds.
			s.sealChecked = time.Now().Add(5*time.Second - s.sealRefresh)
			s.logger.Warn("checking sealing key in redis; using the cached key", zap.Error(err))
			return bytes.Clone(s.sealKey), nil
		}
		return nil, fmt.Errorf("getting sealing key: %w", err)
	}
	if s.sealKey != nil && got != string(s.sealKey) {
		s.logger.Warn("sealing key in redis changed; sign-ins started with the old key must start over")
	}
	s.sealKey = []byte(got)
	s.sealChecked = time.Now()
	return bytes.Clone(s.sealKey), nil
}

// invalidateLocal drops key from this instance's cache at once; the other
// instances drop it when the script's message reaches them.
func (s *redisStore) invalidateLocal(key string) {
	if s.cache != nil {
		s.cache.invalidate(key)
	}
}

// startSubscriber starts, on first use and only when the local cache is
// on, the goroutine that listens for invalidations.
func (s *redisStore) startSubscriber() {
	if s.cache == nil {
		return
	}
	s.subStart.Do(func() {
		s.subMu.Lock()
		defer s.subMu.Unlock()
		if s.closed {
			return
		}
		s.wg.Add(1)
		go s.subscribe()
	})
}

// subscribe keeps a subscription to the invalidation channel until Close,
// reconnecting with backoff. The local cache is used only while the
// subscription is confirmed, and emptied whenever it (re)starts, since
// messages may have been missed in between.
func (s *redisStore) subscribe() {
	defer s.wg.Done()
	backoff := redisSubscriberMinBackoff
	wasDown := false
	for s.ctx.Err() == nil {
		wasLive, err := s.subscribeOnce(wasDown)
		s.live.Store(false)
		s.cache.flush()
		if s.ctx.Err() != nil {
			return
		}
		if wasLive {
			backoff = redisSubscriberMinBackoff
			wasDown = false
		}
		if !wasDown {
			s.logger.Warn("redis invalidation channel lost; local session cache off until it is back",
				zap.String("channel", s.channel), zap.Error(err))
			wasDown = true
		}
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, redisSubscriberMaxBackoff)
	}
}

// subscribeOnce runs one subscription until it fails. It reports whether
// the subscription was ever confirmed.
func (s *redisStore) subscribeOnce(recovering bool) (wasLive bool, err error) {
	ps := s.client.Subscribe(s.ctx) // no channel yet: no I/O
	s.subMu.Lock()
	if s.closed {
		s.subMu.Unlock()
		_ = ps.Close()
		return false, redis.ErrClosed
	}
	s.pubsub = ps
	s.subMu.Unlock()
	defer func() {
		s.subMu.Lock()
		s.pubsub = nil
		s.subMu.Unlock()
		_ = ps.Close()
	}()

	if err := ps.Subscribe(s.ctx, s.channel); err != nil {
		return false, err
	}
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(s.ctx, s.pingEvery)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !pinged {
				// Silence: make sure the connection is still there.
				if err := ps.Ping(s.ctx); err != nil {
					return wasLive, err
				}
				pinged = true
				continue
			}
			return wasLive, err
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Message:
			s.cache.invalidate(m.Payload)
		case *redis.Subscription:
			if m.Kind == "subscribe" && m.Channel == s.channel {
				s.cache.flush()
				s.live.Store(true)
				if !wasLive && recovering {
					s.logger.Info("redis invalidation channel back; local session cache on", zap.String("channel", s.channel))
				}
				wasLive = true
			}
		}
	}
}

// redisLocalCache holds sessions read from Redis for a short while. Only
// sessions that were found are cached, so a sign-in on another instance is
// seen at once. Every invalidation bumps a generation number, and a read
// from Redis is cached only if no invalidation at all happened while it was
// under way: a read that started before a sign-out can never put the old
// session back, however slow Redis was.
type redisLocalCache struct {
	ttl time.Duration
	max int

	mu        sync.RWMutex
	entries   map[string]redisCacheEntry
	gen       uint64 // counts invalidations and flushes
	lastSweep time.Time
}

type redisCacheEntry struct {
	session  *Session
	deadline time.Time // the session's
	expires  time.Time // when the entry stops being used
}

func newRedisLocalCache(ttl time.Duration, max int) *redisLocalCache {
	return &redisLocalCache{ttl: ttl, max: max, entries: make(map[string]redisCacheEntry), lastSweep: time.Now()}
}

func (c *redisLocalCache) get(key string) (*Session, time.Time, bool) {
	c.mu.RLock()
	e, ok := c.entries[key]
	c.mu.RUnlock()
	if !ok || !time.Now().Before(e.expires) {
		return nil, time.Time{}, false
	}
	return e.session, e.deadline, true
}

// generation is taken before a read from Redis and handed to put.
func (c *redisLocalCache) generation() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gen
}

// put caches s unless anything was invalidated, or the cache flushed,
// since gen.
func (c *redisLocalCache) put(key string, s *Session, deadline time.Time, gen uint64) {
	t := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	c.makeRoomLocked(t)
	c.entries[key] = redisCacheEntry{session: s, deadline: deadline, expires: t.Add(c.ttl)}
}

func (c *redisLocalCache) invalidate(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	delete(c.entries, key)
}

// flush empties the cache.
func (c *redisLocalCache) flush() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	clear(c.entries)
}

// makeRoomLocked drops expired entries every few seconds and, when the
// cache is full, a tenth of its entries at random.
func (c *redisLocalCache) makeRoomLocked(t time.Time) {
	if len(c.entries) < c.max && t.Sub(c.lastSweep) < 5*time.Second {
		return
	}
	c.lastSweep = t
	for k, e := range c.entries {
		if !t.Before(e.expires) {
			delete(c.entries, k)
		}
	}
	for k := range c.entries { // map order is random enough for eviction
		if len(c.entries) < c.max*9/10 {
			break
		}
		delete(c.entries, k)
	}
}

func (c *redisLocalCache) size() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}

// redisSaveScript writes a session and its index entries, removes the key
// from the indexes of the sid and subject it had before, and announces the
// change. With must-exist "1" (Replace) it writes nothing (and returns 0)
// when the session is gone: a refresh never brings back a session that a
// sign-out ended meanwhile; and it keeps a later deadline that a visit
// (Touch) wrote since the session was read.
//
//	KEYS: session hash, sid index, subject index
//	ARGV: key, data, sid, sub, deadline (unix ms), index ttl (ms), base, channel, must-exist
var redisSaveScript = redis.NewScript(`
local dl = ARGV[5]
if ARGV[9] == '1' then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return 0
  end
  local cur = redis.call('HGET', KEYS[1], 'dl')
  if cur and tonumber(cur) > tonumber(dl) then
    dl = cur
  end
end
local old = redis.call('HMGET', KEYS[1], 'sid', 'sub')
if old[1] and old[1] ~= '' and old[1] ~= ARGV[3] then
  redis.call('SREM', ARGV[7] .. 'sid:' .. old[1], ARGV[1])
end
if old[2] and old[2] ~= '' and old[2] ~= ARGV[4] then
  redis.call('SREM', ARGV[7] .. 'sub:' .. old[2], ARGV[1])
end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'sid', ARGV[3], 'sub', ARGV[4], 'dl', dl)
redis.call('PEXPIREAT', KEYS[1], dl)
local ttl = tonumber(ARGV[6])
for i = 2, 3 do
  if ARGV[i + 1] ~= '' then
    redis.call('SADD', KEYS[i], ARGV[1])
    if redis.call('PTTL', KEYS[i]) < ttl then
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  end
end
redis.call('PUBLISH', ARGV[8], ARGV[1])
return 1
`)

// redisTouchScript records a visit of a session that exists: its seen
// field, its deadline, and index sets that live at least as long.
//
//	KEYS: session hash
//	ARGV: key, seen (unix ms), deadline (unix ms), index ttl (ms), base, channel
var redisTouchScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local cur = redis.call('HMGET', KEYS[1], 'sid', 'sub')
redis.call('HSET', KEYS[1], 'seen', ARGV[2], 'dl', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
local ttl = tonumber(ARGV[4])
local index = {'sid:', 'sub:'}
for i = 1, 2 do
  if cur[i] and cur[i] ~= '' then
    local k = ARGV[5] .. index[i] .. cur[i]
    if redis.call('PTTL', k) < ttl then
      redis.call('PEXPIRE', k, ttl)
    end
  end
end
redis.call('PUBLISH', ARGV[6], ARGV[1])
return 1
`)

// redisMarkSIDScript records when Pliro ended a session, keeping the later
// time when it is marked already (a late or retried older logout).
//
//	KEYS: mark
//	ARGV: time (unix ms), ttl (ms)
var redisMarkSIDScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
local at = ARGV[1]
if cur and tonumber(cur) > tonumber(at) then
  at = cur
end
redis.call('SET', KEYS[1], at, 'PX', ARGV[2])
return 1
`)

// redisDeleteScript ends one session and removes it from its indexes.
//
//	KEYS: session hash
//	ARGV: key, base, channel
var redisDeleteScript = redis.NewScript(`
local old = redis.call('HMGET', KEYS[1], 'sid', 'sub')
if old[1] and old[1] ~= '' then redis.call('SREM', ARGV[2] .. 'sid:' .. old[1], ARGV[1]) end
if old[2] and old[2] ~= '' then redis.call('SREM', ARGV[2] .. 'sub:' .. old[2], ARGV[1]) end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
`)

// redisDeleteByIndexScript ends the sessions of one index set whose field
// still holds the value (and whose subject matches, when a subject is
// given), drops entries of sessions that expired or moved, and returns the
// keys it ended.
//
//	KEYS: index set
//	ARGV: field (sid or sub), value, subject or '', base, channel
var redisDeleteByIndexScript = redis.NewScript(`
local deleted = {}
for _, k in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local sk = ARGV[4] .. 's:' .. k
  local cur = redis.call('HMGET', sk, 'sid', 'sub')
  local v = cur[1]
  if ARGV[1] == 'sub' then v = cur[2] end
  if v ~= ARGV[2] then
    redis.call('SREM', KEYS[1], k)
  elseif ARGV[3] == '' or cur[2] == ARGV[3] then
    if cur[1] ~= '' then redis.call('SREM', ARGV[4] .. 'sid:' .. cur[1], k) end
    if cur[2] ~= '' then redis.call('SREM', ARGV[4] .. 'sub:' .. cur[2], k) end
    redis.call('DEL', sk)
    redis.call('PUBLISH', ARGV[5], k)
    deleted[#deleted + 1] = k
  end
end
return deleted
`)

// redisSealingKeyScript stores ARGV[1] as the sealing key unless there is
// one, and returns the one there is.
var redisSealingKeyScript = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
`)

// parseRedisStore reads the redis store's config. The dispenser is on the
// token "redis" of a "store redis" line inside the pliro block; addresses
// may follow on that line, the rest goes in a block:
//
//	store redis [<address...>] {
//		addresses         <host:port...>
//		cluster
//		master_name       <name>
//		username          <user>
//		password          <password>
//		sentinel_username <user>
//		sentinel_password <password>
//		db                <number>
//		key_prefix        <prefix>
//		tls
//		tls_server_name   <name>
//		dial_timeout      <duration>
//		read_timeout      <duration>
//		write_timeout     <duration>
//		local_cache_ttl   <duration>|off
//	}
//
// Secrets belong in placeholders: password {env.REDIS_PASSWORD}.
func parseRedisStore(d *caddyfile.Dispenser) (*RedisStoreConfig, error) {
	cfg := new(RedisStoreConfig)
	cfg.Addresses = d.RemainingArgs()
	strs := map[string]*string{
		"master_name":       &cfg.MasterName,
		"username":          &cfg.Username,
		"password":          &cfg.Password,
		"sentinel_username": &cfg.SentinelUsername,
		"sentinel_password": &cfg.SentinelPassword,
		"key_prefix":        &cfg.KeyPrefix,
		"tls_server_name":   &cfg.TLSServerName,
	}
	durations := map[string]*caddy.Duration{
		"dial_timeout":  &cfg.DialTimeout,
		"read_timeout":  &cfg.ReadTimeout,
		"write_timeout": &cfg.WriteTimeout,
	}
	flags := map[string]*bool{
		"cluster": &cfg.Cluster,
		"tls":     &cfg.TLS,
	}
	seen := map[string]bool{}
	if len(cfg.Addresses) > 0 {
		seen["addresses"] = true
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			if name == "addresses" {
				return nil, d.Err("redis: duplicate subdirective 'addresses': give every address once, on the store line or in addresses")
			}
			return nil, d.Errf("redis: duplicate subdirective '%s'", name)
		}
		seen[name] = true
		switch {
		case strs[name] != nil:
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			*strs[name] = d.Val()
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case durations[name] != nil:
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			dur, err := parseRedisDuration(d, name)
			if err != nil {
				return nil, err
			}
			*durations[name] = caddy.Duration(dur)
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case flags[name] != nil:
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			*flags[name] = true
		case name == "addresses":
			cfg.Addresses = d.RemainingArgs()
			if len(cfg.Addresses) == 0 {
				return nil, d.ArgErr()
			}
		case name == "db":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 0 {
				return nil, d.Errf("redis: db must be a database number, not %q", d.Val())
			}
			cfg.DB = n
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case name == "local_cache_ttl":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			// off (or 0) turns the cache off; in JSON that is a negative
			// value, since 0 there means the default.
			cfg.LocalCacheTTL = -1
			if d.Val() != "off" {
				dur, err := parseRedisDuration(d, name)
				if err != nil {
					return nil, err
				}
				if dur > 0 {
					cfg.LocalCacheTTL = caddy.Duration(dur)
				}
			}
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		default:
			return nil, d.Errf("redis: unrecognized subdirective '%s'", name)
		}
	}
	if len(cfg.Addresses) == 0 {
		return nil, d.Err("redis: addresses is required, e.g. store redis 127.0.0.1:6379")
	}
	return cfg, nil
}

// parseRedisDuration parses the current token, the duration argument of
// subdirective name.
func parseRedisDuration(d *caddyfile.Dispenser, name string) (time.Duration, error) {
	dur, err := caddy.ParseDuration(d.Val())
	if err != nil {
		return 0, d.Errf("redis: %s: bad duration %q (use e.g. 500ms, 2s): %v", name, d.Val(), err)
	}
	if dur < 0 {
		return 0, d.Errf("redis: %s must not be negative", name)
	}
	return dur, nil
}

// Interface guards
var (
	_ Store            = (*redisStore)(nil)
	_ caddy.Destructor = (*redisStore)(nil)
)
