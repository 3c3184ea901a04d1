package llq

import (
	"sync"
	"time"
)

// stateSource is what the keeper snapshots: the LLQ transport's table. gen
// changes whenever the table does, so an idle server writes nothing.
type stateSource interface {
	stateSnapshot(now time.Time) (snap *snapshot, gen uint64)
}

// stateKeeper writes an LLQ table to its state file: every interval if it
// changed, at once when asked (a reload), and a last time at a clean
// shutdown. A crash therefore loses at most what changed in the last
// interval: setups (their clients get NO-SUCH-LLQ at their next refresh and
// set up again), refreshes (a restored LLQ expires when its previous lease
// would have) and terminations (an LLQ that lives on until its lease ends).
type stateKeeper struct {
	src     stateSource
	path    string
	key     []byte
	metrics *listenerMetrics

	mu       sync.Mutex // serialises writes: the loop's and stop's
	written  uint64     // generation in the file
	every    chan time.Duration
	kick     chan struct{}
	quit     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func newStateKeeper(src stateSource, path string, key []byte, every time.Duration, m *listenerMetrics) *stateKeeper {
	k := &stateKeeper{
		src: src, path: path, key: key, metrics: m,
		every: make(chan time.Duration, 1),
		kick:  make(chan struct{}, 1),
		quit:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	go k.run(every)
	return k
}

func (k *stateKeeper) run(every time.Duration) {
	defer close(k.done)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-k.quit:
			return
		case d := <-k.every:
			tick.Reset(d)
		case <-k.kick:
			k.write(true)
		case <-tick.C:
			k.write(false)
		}
	}
}

// now asks for a write soon, whether or not the table changed: a reload
// writes the file.
func (k *stateKeeper) now() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// setInterval changes the period, after a reload.
func (k *stateKeeper) setInterval(d time.Duration) {
	select {
	case <-k.every: // an older value nobody read yet
	default:
	}
	k.every <- d
}

// stop ends the loop and writes the table a last time. Call it before the
// table is forgotten.
func (k *stateKeeper) stop() {
	k.stopOnce.Do(func() {
		close(k.quit)
		<-k.done
		k.write(true)
	})
}

// write snapshots the table and replaces the file with it, unless nothing
// changed since the last write and force is false.
func (k *stateKeeper) write(force bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	start := time.Now()
	snap, gen := k.src.stateSnapshot(start)
	if !force && gen == k.written {
		return nil
	}
	data, err := encodeState(snap, k.key)
	if err == nil {
		err = writeAtomic(k.path, data, 0o600)
	}
	if err != nil {
		k.metrics.stateWrites.WithLabelValues("error").Inc()
		log.Errorf("cannot write state file %s: %v", k.path, err)
		return err
	}
	k.written = gen
	k.metrics.stateWrites.WithLabelValues("ok").Inc()
	k.metrics.stateWriteSeconds.Observe(time.Since(start).Seconds())
	k.metrics.stateBytes.Set(float64(len(data)))
	k.metrics.stateLLQs.Set(float64(snap.llqs()))
	return nil
}
