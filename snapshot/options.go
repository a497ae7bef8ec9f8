package snapshot

import (
	"time"
)

type options struct {
	policy       Policy
	mountOptions []string
	decisionTTL  time.Duration
}

// Opt configures New.
type Opt func(*options)

// WithPolicy sets what happens to images that cannot be streamed
// (default PolicyFallback).
func WithPolicy(p Policy) Opt { return func(o *options) { o.policy = p } }

// WithMountOptions adds options to every overlay mount the snapshotter
// returns (not to bind mounts).
func WithMountOptions(opts ...string) Opt {
	return func(o *options) { o.mountOptions = append(o.mountOptions, opts...) }
}

// WithDecisionTTL sets how long a "not streamable" answer for an image is
// remembered, so that an image's layers are resolved, logged and counted
// once per pull rather than once per layer (default one minute).
func WithDecisionTTL(d time.Duration) Opt { return func(o *options) { o.decisionTTL = d } }
