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
	// a Server serves (in the order added) also answers to the empty name.
	Name string
	// Description is shown to humans by tools such as nbdinfo.
	Description string
	Backend     Backend
}

// Server serves exports over NBD. Its methods may be called concurrently, and
// all connections share one buffer budget. Exports may be added and removed
// while it serves (Add, Remove).
type Server struct {
	mu      sync.RWMutex
	exports []*export // in the order added; the first is the default export

	opts    *options
	budget  *semaphore.Weighted
	buffers bufferPool
	nextID  atomic.Uint64
}

// export is an Export being served and the connections in transmission on
// it, so that Remove can end them.
type export struct {
	Export
	conns   map[net.Conn]struct{} // under Server.mu
	active  sync.WaitGroup        // connections in transmission
	removed bool                  // under Server.mu
}

// handshakeTimeout bounds option haggling, so a client that connects and
// then says nothing does not hold a connection forever.
const handshakeTimeout = time.Minute

// New makes a Server for exports; the first one is the default export. The
// list may be empty: exports can be added later with Add.
func New(exports []Export, opts ...Option) (*Server, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:   o,
		budget: semaphore.NewWeighted(o.bufferBudget),
	}
	for _, e := range exports {
		if err := s.Add(e); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Add serves e from now on; its name must not be in use. An export added to
// a Server with no exports becomes its default export.
func (s *Server) Add(e Export) error {
	switch {
	case e.Backend == nil:
		return fmt.Errorf("nbdserver: export %q: no backend", e.Name)
	case len(e.Name) > maxNameLength || len(e.Description) > maxNameLength:
		return fmt.Errorf("nbdserver: export %.64q...: name or description longer than %d bytes", e.Name, maxNameLength)
	case e.Backend.Size() < 0:
		return fmt.Errorf("nbdserver: export %q: negative size %d", e.Name, e.Backend.Size())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, x := range s.exports {
		if x.Name == e.Name {
			return fmt.Errorf("nbdserver: export %q: duplicate name", e.Name)
		}
	}
	s.exports = append(s.exports, &export{Export: e, conns: map[net.Conn]struct{}{}})
	return nil
}

// Remove stops serving the named export: new handshakes asking for it fail
// as for an unknown export, and the connections in transmission on it are
// closed (requests not yet answered stay unanswered), so that the caller
// can release its Backend. It waits until those connections' request loops
// have ended, or until ctx is done. A ReadAt still running then (stuck on
// its backend, or abandoned by WithReadTimeout) is not waited for: closing
// the Backend must make such late calls fail, not crash. Remove returns an
// error wrapping ErrUnknownExport if there is no such export.
func (s *Server) Remove(ctx context.Context, name string) error {
	s.mu.Lock()
	var e *export
	for i, x := range s.exports {
		if x.Name == name {
			e = x
			s.exports = append(s.exports[:i:i], s.exports[i+1:]...)
			break
		}
	}
	if e == nil {
		s.mu.Unlock()
		return fmt.Errorf("nbdserver: remove export %q: %w", name, ErrUnknownExport)
	}
	e.removed = true
	for c := range e.conns {
		c.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		e.active.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("nbdserver: remove export %q: waiting for its connections: %w", name, ctx.Err())
	}
}

// Exports lists the exports being served, the default one first.
func (s *Server) Exports() []Export {
	s.mu.RLock()
	defer s.mu.RUnlock()
	list := make([]Export, len(s.exports))
	for i, e := range s.exports {
		list[i] = e.Export
	}
	return list
}

// ExportSize returns the size in bytes of the named export ("" is the
// default one), or an error wrapping ErrUnknownExport: what a client that
// does not do the handshake (the kernel, through ServeTransmission) must
// be told by the one who connects it.
func (s *Server) ExportSize(name string) (int64, error) {
	e, ok := s.export(name)
	if !ok {
		return 0, fmt.Errorf("nbdserver: export %q: %w", name, ErrUnknownExport)
	}
	return e.Backend.Size(), nil
}

// export finds an export by name; the empty name is the default export.
func (s *Server) export(name string) (*export, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if name == "" && len(s.exports) > 0 {
		return s.exports[0], true
	}
	for _, e := range s.exports {
		if e.Name == name {
			return e, true
		}
	}
	return nil, false
}

// join records c as in transmission on e; it is false when e was removed
// since the handshake found it. leave undoes it.
func (s *Server) join(e *export, c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.removed {
		return false
	}
	e.conns[c] = struct{}{}
	e.active.Add(1)
	return true
}

func (s *Server) leave(e *export, c net.Conn) {
	s.mu.Lock()
	delete(e.conns, c)
	s.mu.Unlock()
	e.active.Done()
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
	if !s.join(exp, c) {
		return fmt.Errorf("nbdserver: export %q: removed during the handshake: %w", exp.Name, ErrUnknownExport)
	}
	defer s.leave(exp, c)
	log.Debug().Str("export", exp.Name).Msg("nbd transmission")
	return s.transmit(ctx, c, r, &exp.Export)
}

// ServeTransmission serves c, whose handshake is already done (a socket
// handed to the kernel's nbd driver), as the named export ("" is the default
// one) until the client sends NBD_CMD_DISC or ctx is done. It closes c. When
// ctx ends, requests not yet answered stay unanswered: the kernel resends
// them on the socket that replaces this one.
func (s *Server) ServeTransmission(ctx context.Context, c net.Conn, export string) error {
	defer c.Close()
	exp, ok := s.export(export)
	if !ok || !s.join(exp, c) {
		return fmt.Errorf("nbdserver: export %q: %w", export, ErrUnknownExport)
	}
	defer s.leave(exp, c)
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	ctx, _ = s.connLogger(ctx)
	return s.transmit(ctx, c, bufio.NewReader(c), &exp.Export)
}

// connLogger gives a connection's context a logger with its number.
func (s *Server) connLogger(ctx context.Context) (context.Context, zerolog.Logger) {
	log := s.logger(ctx).With().Uint64("nbd_conn", s.nextID.Add(1)).Logger()
	return log.WithContext(ctx), log
}
