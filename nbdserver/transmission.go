package nbdserver

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// transmission is the request loop of one connection. One goroutine at a
// time reads requests; each READ that cannot be answered at once runs on a
// goroutine of its own and queues its reply whole, so replies go out in the
// order reads finish.
type transmission struct {
	s    *Server
	c    net.Conn
	r    *bufio.Reader
	exp  *Export
	size uint64
	log  zerolog.Logger

	slots   chan struct{}  // one token per unanswered READ
	pending sync.WaitGroup // unanswered READs

	// raw is the socket for sendfile(2), nil when c is not a socket or
	// the backend is no FileReader; noSendfile is set once sendfile has
	// failed as unsupported, and replies go through buffers from then on.
	raw        syscall.RawConn
	files      FileReader
	noSendfile atomic.Bool

	queueMu sync.Mutex
	queue   []*pendingReply // replies waiting for the writer; under queueMu
	// inlineBytes counts queued inline replies' bytes; under queueMu.
	inlineBytes int
	writing     bool // a caller is writing replies; under queueMu
	broken      bool // a reply failed to go out whole; only the writer touches it
}

func (s *Server) transmit(ctx context.Context, c net.Conn, r *bufio.Reader, exp *Export) error {
	t := &transmission{
		s:     s,
		c:     c,
		r:     r,
		exp:   exp,
		size:  uint64(exp.Backend.Size()),
		log:   zerolog.Ctx(ctx).With().Str("export", exp.Name).Logger(),
		slots: make(chan struct{}, s.opts.maxInFlight),
	}
	t.setupSocket()
	err := t.serve(ctx)
	// Replies still queued (the stream broke off mid-batch) give back what
	// they hold.
	t.abandon()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("nbdserver: export %q: %w", exp.Name, err)
	}
	return nil
}

// sendBuffer is the socket send buffer asked for (the kernel caps it at
// net.core.wmem_max, and doubles it): a large read's reply is queued whole
// in the kernel, rather than in pieces each waiting for the client.
const sendBuffer = 4 << 20

// setupSocket enlarges the send buffer of a unix or TCP socket, and keeps
// its raw connection for sendfile if the backend can hand over files.
func (t *transmission) setupSocket() {
	type socket interface {
		SetWriteBuffer(int) error
		SyscallConn() (syscall.RawConn, error)
	}
	var sock socket
	switch c := t.c.(type) {
	case *net.UnixConn:
		sock = c
	case *net.TCPConn:
		sock = c
	default:
		return
	}
	_ = sock.SetWriteBuffer(sendBuffer) // best effort: a smaller buffer only costs speed
	if fr, ok := t.exp.Backend.(FileReader); ok {
		if raw, err := sock.SyscallConn(); err == nil {
			t.raw, t.files = raw, fr
		}
	}
}

// serve reads and answers requests until the connection ends. A READ that
// must wait for its backend (a cache miss) is served by the goroutine that
// read it, which hands the request stream to a new goroutine first: the
// fault starts at once instead of after another goroutine is scheduled
// (tens of microseconds on an idle VM, on the path of every cold read).
// The caller's goroutine only waits for the end, so a read that never
// returns cannot hold up the connection's end.
func (t *transmission) serve(ctx context.Context) error {
	done := make(chan error, 1)
	go t.follow(ctx, done)
	return <-done
}

// follow reads requests until one is a READ to run on its own, which it
// serves after starting a new follow, or until the stream ends: then it
// sends why on done.
func (t *transmission) follow(ctx context.Context, done chan<- error) {
	req, charge, err := t.next(ctx)
	if err != nil || req == nil {
		done <- err
		return
	}
	go t.follow(ctx, done)
	t.read(*req, charge)
}

// next reads and answers requests until one is a READ admitted to run on
// its own (returned with the buffer budget it holds), or the stream ends
// (nil request; the error says why, nil for a clean end).
func (t *transmission) next(ctx context.Context) (*protocol.TransmissionRequestHeader, int64, error) {
	var hb [requestHeaderSize]byte
	for {
		if _, err := io.ReadFull(t.r, hb[:]); err != nil {
			if err == io.EOF {
				// A hard disconnect between requests; answer what is in
				// flight in case the client still reads.
				t.flush()
				t.drain(ctx)
				return nil, 0, nil
			}
			return nil, 0, fmt.Errorf("request header: %w", err)
		}
		req := protocol.TransmissionRequestHeader{
			RequestMagic: binary.BigEndian.Uint32(hb[0:]),
			CommandFlags: binary.BigEndian.Uint16(hb[4:]),
			Type:         binary.BigEndian.Uint16(hb[6:]),
			Handle:       binary.BigEndian.Uint64(hb[8:]),
			Offset:       binary.BigEndian.Uint64(hb[16:]),
			Length:       binary.BigEndian.Uint32(hb[24:]),
		}
		if req.RequestMagic != protocol.TRANSMISSION_MAGIC_REQUEST {
			return nil, 0, fmt.Errorf("request magic %#x: %w", req.RequestMagic, ErrBadMagic)
		}
		// Command flags (FUA, DF, ...) change nothing for a read-only export
		// with simple replies, so they are ignored rather than refused.
		switch req.Type {
		case protocol.TRANSMISSION_TYPE_REQUEST_READ:
			if !t.valid(req) {
				t.reply(req.Handle, protocol.TRANSMISSION_ERROR_EINVAL, nil)
				continue
			}
			if t.readInline(req) {
				continue
			}
			charge, err := t.admit(ctx, req)
			if err != nil {
				return nil, 0, err
			}
			return &req, charge, nil
		case protocol.TRANSMISSION_TYPE_REQUEST_WRITE:
			// The payload follows the header whatever the answer; skip it
			// through a small fixed buffer to stay in step with the client.
			if _, err := io.CopyN(io.Discard, t.r, int64(req.Length)); err != nil {
				return nil, 0, fmt.Errorf("write payload: %w", err)
			}
			t.reply(req.Handle, protocol.TRANSMISSION_ERROR_EPERM, nil)
		case cmdTrim, cmdWriteZeroes:
			t.reply(req.Handle, protocol.TRANSMISSION_ERROR_EPERM, nil)
		case cmdFlush:
			// Nothing is ever written, so there is nothing to flush.
			t.reply(req.Handle, 0, nil)
		case protocol.TRANSMISSION_TYPE_REQUEST_DISC:
			t.flush()
			t.drain(ctx)
			return nil, 0, nil
		default:
			t.reply(req.Handle, protocol.TRANSMISSION_ERROR_EINVAL, nil)
		}
	}
}

// Inline reads: at most this long each, and at most inlineQueued bytes of
// their replies wait for a batch. Reads of at least fileReplyMin bytes are
// sent from files when the backend can (below that, a copy costs less than
// the extra system calls).
const (
	inlineMax    = 1 << 20
	inlineQueued = 4 << 20
	fileReplyMin = 64 << 10
)

// readInline answers a READ on this goroutine if the backend can serve it
// at once. Its reply is queued; the queue is written when no further
// request is already buffered (the next read would block) or it is full.
func (t *transmission) readInline(req protocol.TransmissionRequestHeader) bool {
	if req.Length > inlineMax {
		return false
	}
	if req.Length >= fileReplyMin && t.files != nil && !t.noSendfile.Load() {
		if p := t.fileReply(req); p != nil {
			t.queueInline(p, int(req.Length))
			return true
		}
	}
	cr, ok := t.exp.Backend.(CachedReader)
	if !ok {
		return false
	}
	// Inline buffers count against the server's budget too; without room,
	// the read takes the ordinary path, which waits for it.
	charge := classSize(int(req.Length))
	if !t.s.budget.TryAcquire(charge) {
		return false
	}
	buf := t.s.buffers.get(int(req.Length))
	if !cr.ReadAtCached(buf, int64(req.Offset)) {
		t.s.buffers.put(buf)
		t.s.budget.Release(charge)
		return false
	}
	p := &pendingReply{data: buf, release: func() {
		t.s.buffers.put(buf)
		t.s.budget.Release(charge)
	}}
	p.setHead(req.Handle, 0)
	t.queueInline(p, len(buf))
	return true
}

// fileReply asks the backend for the files holding a READ's bytes; nil if
// it cannot hand them over now, or describes them wrongly.
func (t *transmission) fileReply(req protocol.TransmissionRequestHeader) *pendingReply {
	p := &pendingReply{}
	total, bad := int64(0), false
	release, ok := t.files.ReadAtFiles(int64(req.Offset), int(req.Length), func(fd int, off, n int64) {
		if n <= 0 || off < 0 || fd < -1 {
			bad = true
			return
		}
		p.files = append(p.files, fileSeg{fd: fd, off: off, n: n})
		total += n
	})
	if !ok {
		return nil
	}
	if bad || total != int64(req.Length) {
		// A reply of the wrong length would desynchronize the stream.
		release()
		t.log.Warn().Uint64("offset", req.Offset).Uint32("length", req.Length).
			Msg("backend described a read's files wrongly: reading it into a buffer instead")
		return nil
	}
	p.release = release
	p.setHead(req.Handle, 0)
	return p
}

// queueInline queues an inline reply of n data bytes and writes the queue
// if no further request is buffered or the queue is full.
func (t *transmission) queueInline(p *pendingReply, n int) {
	t.queueMu.Lock()
	t.queue = append(t.queue, p)
	t.inlineBytes += n
	full := t.inlineBytes >= inlineQueued
	t.queueMu.Unlock()
	if full || t.r.Buffered() < requestHeaderSize {
		t.flush()
	}
}

// abandon gives back what queued replies hold, without writing them, once
// the connection's request loop has ended; a writer still at work drains
// the queue itself.
func (t *transmission) abandon() {
	t.queueMu.Lock()
	if t.writing {
		t.queueMu.Unlock()
		return
	}
	batch := t.queue
	t.queue = nil
	t.inlineBytes = 0
	t.queueMu.Unlock()
	for _, q := range batch {
		if q.done != nil {
			close(q.done)
		}
		if q.release != nil {
			q.release()
		}
	}
}

// flush writes the queued replies unless a writer is already at it (it
// drains the queue before it stops).
func (t *transmission) flush() {
	t.queueMu.Lock()
	if t.writing || len(t.queue) == 0 {
		t.queueMu.Unlock()
		return
	}
	t.writing = true
	t.writeQueue()
}

// valid tells whether a READ is within the export and the payload limit.
func (t *transmission) valid(req protocol.TransmissionRequestHeader) bool {
	n := uint64(req.Length)
	return n > 0 && n <= MaximumPayload && req.Offset <= t.size && n <= t.size-req.Offset
}

// admit waits for a free slot and the buffer budget of a READ that runs on
// its own, and counts it as pending; it returns the budget charged.
// Waiting here, before the next request is read, is the back pressure.
func (t *transmission) admit(ctx context.Context, req protocol.TransmissionRequestHeader) (int64, error) {
	select {
	case t.slots <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	charge := classSize(int(req.Length))
	if err := t.s.budget.Acquire(ctx, charge); err != nil {
		<-t.slots
		return 0, err
	}
	t.pending.Add(1)
	return charge, nil
}

// read serves one READ. The reply is claimed once: by the read finishing or
// by the read timeout, whichever comes first. The buffer and its budget are
// held until ReadAt returns, even when the timeout answered.
func (t *transmission) read(req protocol.TransmissionRequestHeader, charge int64) {
	var claimed atomic.Bool
	// answer sends the reply if nobody has; logFirst, if not nil, logs why
	// before the reply goes out, so the log line is written before the
	// client sees the error and before the connection may be drained.
	answer := func(errno uint32, data []byte, logFirst func()) {
		if !claimed.CompareAndSwap(false, true) {
			return
		}
		if logFirst != nil {
			logFirst()
		}
		t.reply(req.Handle, errno, data)
		<-t.slots
		t.pending.Done()
	}
	var timer *time.Timer
	if d := t.s.opts.readTimeout; d > 0 {
		timer = time.AfterFunc(d, func() {
			answer(errEIO, nil, func() {
				t.log.Warn().Uint64("offset", req.Offset).Uint32("length", req.Length).
					Dur("timeout", d).Msg("nbd read timed out: answered EIO")
			})
		})
	}
	buf := t.s.buffers.get(int(req.Length))
	n, err := t.exp.Backend.ReadAt(buf, int64(req.Offset))
	if timer != nil {
		timer.Stop()
	}
	if n == len(buf) && (err == nil || errors.Is(err, io.EOF)) {
		answer(0, buf, nil)
	} else {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		answer(errEIO, nil, func() {
			t.log.Warn().Err(err).Uint64("offset", req.Offset).Uint32("length", req.Length).
				Msg("nbd read failed: answered EIO")
		})
	}
	t.s.buffers.put(buf)
	t.s.budget.Release(charge)
}

// reply writes one simple reply whole, and returns once it is written (the
// caller then reuses data). Replies that become ready while another is being
// written are sent together in one writev by whichever caller is writing
// (group commit), which saves a system call per reply under load. A reply
// that fails to go out leaves the stream unusable, so the connection is
// closed and later replies dropped. The write timeout applies to each
// chunk of at most replyChunk bytes, so it measures a client that stopped
// reading, not a slow one.
func (t *transmission) reply(cookie uint64, errno uint32, data []byte) {
	p := &pendingReply{data: data, done: make(chan struct{})}
	p.setHead(cookie, errno)
	t.queueMu.Lock()
	t.queue = append(t.queue, p)
	if t.writing {
		t.queueMu.Unlock()
		<-p.done
		return
	}
	t.writing = true
	t.writeQueue()
}

// writeQueue writes batches until the queue is empty; it is called with
// queueMu held and writing set, and returns with queueMu released.
func (t *transmission) writeQueue() {
	for len(t.queue) > 0 {
		batch := t.queue
		t.queue = nil
		t.inlineBytes = 0
		t.queueMu.Unlock()
		t.writeBatch(batch)
		for _, q := range batch {
			if q.done != nil {
				close(q.done)
			}
			if q.release != nil {
				q.release()
			}
		}
		t.queueMu.Lock()
	}
	t.writing = false
	t.queueMu.Unlock()
}

// pendingReply is a reply waiting to be written: its header, then data or
// the file pieces to send. Its writer signals done (a goroutine's reply) or
// calls release (an inline reply) once written.
type pendingReply struct {
	head    [simpleReplySize]byte
	data    []byte
	files   []fileSeg
	done    chan struct{}
	release func()
}

// fileSeg is n bytes of file descriptor fd from off; fd -1: n zero bytes.
type fileSeg struct {
	fd     int
	off, n int64
}

func (p *pendingReply) setHead(cookie uint64, errno uint32) {
	binary.BigEndian.PutUint32(p.head[0:], protocol.TRANSMISSION_MAGIC_REPLY)
	binary.BigEndian.PutUint32(p.head[4:], errno)
	binary.BigEndian.PutUint64(p.head[8:], cookie)
}

// writeBatch writes replies back to back: buffers in writev calls of at
// most replyChunk bytes each, file pieces with sendfile, each call under a
// fresh write deadline.
func (t *transmission) writeBatch(batch []*pendingReply) {
	if t.broken {
		return
	}
	bufs := make(net.Buffers, 0, 2*len(batch))
	var err error
	for _, p := range batch {
		bufs = append(bufs, p.head[:])
		if len(p.data) > 0 {
			bufs = append(bufs, p.data)
		}
		for _, f := range p.files {
			if f.fd < 0 {
				for n := f.n; n > 0; n -= int64(len(zeros)) {
					bufs = append(bufs, zeros[:min(n, int64(len(zeros)))])
				}
				continue
			}
			if err = t.writeBufs(bufs); err != nil {
				break
			}
			bufs = bufs[:0]
			if err = t.sendFile(f); err != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	if err == nil {
		err = t.writeBufs(bufs)
	}
	if err != nil {
		t.broken = true
		t.c.Close()
		t.log.Debug().Err(err).Msg("nbd reply not sent: closing connection")
	}
}

// zeros is what zero pieces of file replies are sent from.
var zeros [64 << 10]byte

// writeBufs writes bufs in writes of at most replyChunk bytes each.
func (t *transmission) writeBufs(bufs net.Buffers) error {
	for len(bufs) > 0 {
		// Take up to replyChunk bytes, splitting a buffer if need be.
		var seg net.Buffers
		n := 0
		for len(bufs) > 0 && n < replyChunk {
			b := bufs[0]
			if take := replyChunk - n; len(b) > take {
				seg = append(seg, b[:take])
				bufs[0] = b[take:]
				n += take
				break
			}
			seg = append(seg, b)
			n += len(b)
			bufs = bufs[1:]
		}
		t.writeDeadline()
		if _, err := seg.WriteTo(t.c); err != nil {
			return err
		}
	}
	return nil
}

func (t *transmission) writeDeadline() {
	if d := t.s.opts.writeTimeout; d > 0 {
		_ = t.c.SetWriteDeadline(time.Now().Add(d))
	}
}

// sendFile sends a file piece with sendfile(2), at most replyChunk bytes
// per call. Should the kernel refuse sendfile to this socket, the piece
// (and every later one) is read into a buffer and written instead.
func (t *transmission) sendFile(f fileSeg) error {
	off, rem := f.off, f.n
	for rem > 0 {
		t.writeDeadline()
		want := int(min(rem, replyChunk))
		var n int
		var serr error
		err := t.raw.Write(func(s uintptr) bool {
			n, serr = unix.Sendfile(int(s), f.fd, &off, want)
			return serr != unix.EAGAIN
		})
		switch {
		case err != nil:
			return err
		case serr == unix.EINVAL || serr == unix.ENOSYS || serr == unix.EOPNOTSUPP:
			t.noSendfile.Store(true)
			return t.copyFile(fileSeg{fd: f.fd, off: off, n: rem})
		case serr != nil:
			return serr
		case n == 0:
			return fmt.Errorf("file piece ended %d bytes early: %w", rem, io.ErrUnexpectedEOF)
		}
		rem -= int64(n)
	}
	return nil
}

// copyFile sends a file piece through a buffer.
func (t *transmission) copyFile(f fileSeg) error {
	buf := make([]byte, min(f.n, replyChunk))
	for f.n > 0 {
		p := buf[:min(f.n, int64(len(buf)))]
		n, err := unix.Pread(f.fd, p, f.off)
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("file piece ended %d bytes early: %w", f.n, io.ErrUnexpectedEOF)
		}
		if err := t.writeBufs(net.Buffers{p[:n]}); err != nil {
			return err
		}
		f.off, f.n = f.off+int64(n), f.n-int64(n)
	}
	return nil
}

func (t *transmission) drain(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		t.pending.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// replyChunk is how much of a reply is written under one write deadline.
const replyChunk = 1 << 20
