package pliro

import (
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// storeWarningInterval is the least time between two warnings about a
// failing session store on the request path.
const storeWarningInterval = 10 * time.Second

// logThrottle lets one warning through per interval and counts the ones it
// holds back, so that an outage (Redis down under a busy site) writes a line
// every few seconds, not one per request, and still says how many failed.
type logThrottle struct {
	interval time.Duration
	next     atomic.Int64 // unix nanoseconds before which warnings are held back
	held     atomic.Int64 // warnings held back since the last one written
}

func newLogThrottle(interval time.Duration) *logThrottle {
	return &logThrottle{interval: interval}
}

// warn writes msg with err, unless a warning was written less than the
// interval ago.
func (l *logThrottle) warn(logger *zap.Logger, msg string, err error) {
	t := now().UnixNano()
	next := l.next.Load()
	if t < next || !l.next.CompareAndSwap(next, t+int64(l.interval)) {
		l.held.Add(1)
		return
	}
	logger.Warn(msg, zap.Error(err), zap.Int64("store_warnings_held_back", l.held.Swap(0)))
}
