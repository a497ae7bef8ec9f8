package nbdserver

import (
	"fmt"
	"time"

	"github.com/rs/zerolog"
)

// Option configures a Server.
type Option func(*options)

type options struct {
	logger       *zerolog.Logger
	maxInFlight  int
	bufferBudget int64
	readTimeout  time.Duration
	writeTimeout time.Duration

	handshakeTimeout time.Duration // tests shorten it
}

// Defaults of the options.
const (
	DefaultMaxInFlight = 16
	// DefaultBufferBudget is the least budget that serves every request
	// the server advertises: one read of the maximum payload.
	DefaultBufferBudget = MaximumPayload
	DefaultWriteTimeout = 30 * time.Second
)

func newOptions(opts []Option) (*options, error) {
	o := &options{
		maxInFlight:  DefaultMaxInFlight,
		bufferBudget: DefaultBufferBudget,
		writeTimeout: DefaultWriteTimeout,

		handshakeTimeout: handshakeTimeout,
	}
	for _, opt := range opts {
		opt(o)
	}
	if o.maxInFlight < 1 {
		return nil, fmt.Errorf("nbdserver: max in flight %d: must be at least 1", o.maxInFlight)
	}
	if o.bufferBudget < MaximumPayload {
		return nil, fmt.Errorf("nbdserver: buffer budget %d: must be at least the maximum payload %d", o.bufferBudget, MaximumPayload)
	}
	if o.readTimeout < 0 || o.writeTimeout < 0 {
		return nil, fmt.Errorf("nbdserver: negative timeout")
	}
	return o, nil
}

// WithLogger logs through l. Without it each call logs through the logger
// in its context (zerolog.Ctx), which is silent when there is none.
func WithLogger(l zerolog.Logger) Option { return func(o *options) { o.logger = &l } }

// WithMaxInFlight bounds the requests one connection has being served at
// once (default DefaultMaxInFlight). Further requests are not read from the
// socket until one is answered.
func WithMaxInFlight(n int) Option { return func(o *options) { o.maxInFlight = n } }

// WithBufferBudget bounds the bytes of read buffers the whole Server holds at
// once, over all connections (default DefaultBufferBudget; at least
// MaximumPayload). A request waits until its buffer fits. Each request is
// charged at least PreferredBlockSize, so the goroutines of reads abandoned
// by WithReadTimeout are bounded too.
func WithBufferBudget(bytes int64) Option { return func(o *options) { o.bufferBudget = bytes } }

// WithReadTimeout answers NBD_EIO to a read whose Backend.ReadAt has not
// returned within d, and discards its result when it comes. Its buffer stays
// charged to the budget until then. Zero (the default) waits forever.
func WithReadTimeout(d time.Duration) Option { return func(o *options) { o.readTimeout = d } }

// WithWriteTimeout closes a connection whose client has taken no part of a
// reply for d (default DefaultWriteTimeout; zero waits forever), so a client
// that stops reading cannot keep buffers of the shared budget forever.
func WithWriteTimeout(d time.Duration) Option { return func(o *options) { o.writeTimeout = d } }
