package nbdserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/semaphore"
)

// Backend is what an export serves: exactly io.ReaderAt plus Size. ReadAt
// may be called concurrently; it must fill the whole buffer or return an
// error, which answers that one request NBD_EIO.
type Backend interface {
	io.ReaderAt
	// Size is the export's size in bytes; it must not change while served.
	Size() int64
}

// CachedReader is an optional Backend capability. ReadAtCached fills p from
// offset off only if it can without waiting (from memory or local files)
// and reports whether it did; it never blocks on the network. The server
// answers such reads on the connection's own goroutine and sends the
// replies in batches, as a single-threaded server would, saving the
// hand-offs to and from a goroutine per request; the others go to ReadAt.
type CachedReader interface {
	ReadAtCached(p []byte, off int64) bool
}

// FileReader is an optional Backend capability for zero-copy replies: the
// server sends the bytes straight from files to the socket (sendfile(2))
// instead of reading them into a buffer first. ReadAtFiles reports where
// the n bytes at offset off are, if every one of them is in a local file
// (or is zero) right now, without waiting: it calls add once per piece, in
// order, with an open file descriptor, an offset in that file and a length
// (fd -1: that many zero bytes); the pieces' lengths add up to n. The
// descriptors must stay open and their bytes unchanged until the server
// calls release, once it has sent them. ok false means nothing is held; the
// server then reads as it would without this capability. The server uses
// it for large reads on connections that are sockets (unix or TCP).
type FileReader interface {
	ReadAtFiles(off int64, n int, add func(fd int, off, n int64)) (release func(), ok bool)
}

// Export is a named, read-only Backend.
type Export struct {
	// Name is what clients ask for (at most 4096 bytes); the first export
	// of a Server also answers to the empty name.
	Name string
	// Description is shown to humans by tools such as nbdinfo.
	Description string
	Backend     Backend
}

// Server serves exports over NBD. Its methods may be called concurrently, and
// all connections share one buffer budget.
type Server struct {
	exports []Export
	opts    *options
	budget  *semaphore.Weighted
	buffers bufferPool
	nextID  atomic.Uint64
}

// handshakeTimeout bounds option haggling, so a client that connects and
// then says nothing does not hold a connection forever.
const handshakeTimeout = time.Minute

// New makes a Server for exports; the first one is the default export.
func New(exports []Export, opts ...Option) (*Server, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	if len(exports) == 0 {
		return nil, errors.New("nbdserver: no exports")
	}
	seen := make(map[string]bool, len(exports))
	for i, e := range exports {
		switch {
		case e.Backend == nil:
			return nil, fmt.Errorf("nbdserver: export %q: no backend", e.Name)
		case len(e.Name) > maxNameLength || len(e.Description) > maxNameLength:
			return nil, fmt.Errorf("nbdserver: export %d: name or description longer than %d bytes", i, maxNameLength)
		case e.Backend.Size() < 0:
			return nil, fmt.Errorf("nbdserver: export %q: negative size %d", e.Name, e.Backend.Size())
		case seen[e.Name]:
			return nil, fmt.Errorf("nbdserver: export %q: duplicate name", e.Name)
		}
		seen[e.Name] = true
	}
	return &Server{
		exports: append([]Export(nil), exports...),
		opts:    o,
		budget:  semaphore.NewWeighted(o.bufferBudget),
	}, nil
}

// export finds an export by name; the empty name is the default export.
func (s *Server) export(name string) (*Export, bool) {
	if name == "" {
		return &s.exports[0], true
	}
	for i := range s.exports {
		if s.exports[i].Name == name {
			return &s.exports[i], true
		}
	}
	return nil, false
}

func (s *Server) logger(ctx context.Context) zerolog.Logger {
	if s.opts.logger != nil {
		return *s.opts.logger
	}
	return *zerolog.Ctx(ctx)
}

// Serve accepts connections on l until ctx is done, serving each (handshake,
// then transmission) in its own goroutine. It closes l, waits for its
// connections to end, and returns nil when ctx ended it, or the error that
// made Accept fail for good.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	log := s.logger(ctx)
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var temp interface{ Temporary() bool }
			if errors.As(err, &temp) && temp.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				log.Warn().Err(err).Dur("retry_in", delay).Msg("nbd accept")
				select {
				case <-time.After(delay):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("nbdserver: accept: %w", err)
		}
		delay = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ServeConn(ctx, c); err != nil && ctx.Err() == nil {
				log.Debug().Err(err).Msg("nbd connection ended")
			}
		}()
	}
}

// ServeConn serves one connection: the fixed newstyle handshake, then, if
// the client chose an export, transmission until the client disconnects or
// ctx is done. It closes c. A client that aborts or disconnects cleanly
// gives nil.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) error {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	ctx, log := s.connLogger(ctx)
	r := bufio.NewReader(c)
	h := &handshake{s: s, c: c, r: r}
	exp, err := h.run()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("nbdserver: handshake: %w", err)
	}
	if exp == nil {
		return nil
	}
	log.Debug().Str("export", exp.Name).Msg("nbd transmission")
	return s.transmit(ctx, c, r, exp)
}

// ServeTransmission serves c, whose handshake is already done (a socket
// handed to the kernel's nbd driver), as the named export ("" is the default
// one) until the client sends NBD_CMD_DISC or ctx is done. It closes c. When
// ctx ends, requests not yet answered stay unanswered: the kernel resends
// them on the socket that replaces this one.
func (s *Server) ServeTransmission(ctx context.Context, c net.Conn, export string) error {
	defer c.Close()
	exp, ok := s.export(export)
	if !ok {
		return fmt.Errorf("nbdserver: export %q: %w", export, ErrUnknownExport)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	ctx, _ = s.connLogger(ctx)
	return s.transmit(ctx, c, bufio.NewReader(c), exp)
}

// connLogger gives a connection's context a logger with its number.
func (s *Server) connLogger(ctx context.Context) (context.Context, zerolog.Logger) {
	log := s.logger(ctx).With().Uint64("nbd_conn", s.nextID.Add(1)).Logger()
	return log.WithContext(ctx), log
}
