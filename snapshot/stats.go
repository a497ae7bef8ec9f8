package snapshot

import (
	"maps"
	"strings"
	"sync"
	"time"
)

// Stats are the snapshotter's counters since New, for the agent's metrics.
type Stats struct {
	// Placeholders counts layers committed as placeholders (not downloaded).
	Placeholders uint64
	// Images is the number of image mounts this process has live now.
	Images int
	// Fallbacks counts images pulled the ordinary way, by reason.
	Fallbacks map[string]uint64
	// Refused counts pulls failed under PolicyRequire, by reason.
	Refused map[string]uint64
	// Materialized counts layer placeholders filled with their layer.
	Materialized uint64
	// MaterializeFailures counts attempts that failed.
	MaterializeFailures uint64
	// AttachErrors counts devices that could not be attached to an export
	// or adopted; MountErrors image mounts that failed on an attached device.
	AttachErrors, MountErrors uint64
}

type counters struct {
	mu                  sync.Mutex
	placeholders        uint64
	fallbacks           map[string]uint64
	refused             map[string]uint64
	materialized        uint64
	materializeFailures uint64
	attachErrors        uint64
	mountErrors         uint64
}

func (c *counters) add(f func(*counters)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fallbacks == nil {
		c.fallbacks = map[string]uint64{}
		c.refused = map[string]uint64{}
	}
	f(c)
}

// Stats returns a copy of the counters.
func (s *Snapshotter) Stats() Stats {
	s.stats.mu.Lock()
	st := Stats{
		Placeholders:        s.stats.placeholders,
		Fallbacks:           maps.Clone(s.stats.fallbacks),
		Refused:             maps.Clone(s.stats.refused),
		Materialized:        s.stats.materialized,
		MaterializeFailures: s.stats.materializeFailures,
		AttachErrors:        s.stats.attachErrors,
		MountErrors:         s.stats.mountErrors,
	}
	s.stats.mu.Unlock()
	if st.Fallbacks == nil {
		st.Fallbacks = map[string]uint64{}
		st.Refused = map[string]uint64{}
	}
	s.imgMu.Lock()
	for _, im := range s.images {
		if im.live {
			st.Images++
		}
	}
	s.imgMu.Unlock()
	return st
}

// decisionCache remembers, per image (reference and manifest digest: one
// manifest may be in several repositories, converted in some only), why it
// is not streamed, for ttl: its other layers then skip Resolve, and the
// image is logged and counted once per pull.
type decisionCache struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[string]decision
}

type decision struct {
	err     error
	expires time.Time
}

// get returns the remembered reason, or nil.
func (d *decisionCache) get(manifest string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	dec, ok := d.m[manifest]
	if !ok {
		return nil
	}
	if time.Now().After(dec.expires) {
		delete(d.m, manifest)
		return nil
	}
	return dec.err
}

// forget drops what is remembered of image (a reference, any manifest).
func (d *decisionCache) forget(image string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k := range d.m {
		if k == image || strings.HasPrefix(k, image+"@") {
			delete(d.m, k)
		}
	}
}

// put remembers err; first is false when a reason was already remembered.
func (d *decisionCache) put(manifest string, err error) (first bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if d.m == nil {
		d.m = map[string]decision{}
	}
	for k, dec := range d.m {
		if now.After(dec.expires) {
			delete(d.m, k)
		}
	}
	if _, ok := d.m[manifest]; ok {
		return false
	}
	d.m[manifest] = decision{err: err, expires: now.Add(d.ttl)}
	return true
}
