package imageconv

import (
	"io"
	"sync"
)

// readAhead reads r on its own goroutine, a few buffers ahead of the
// consumer, so decompressing a layer and parsing it use two cores.
type readAhead struct {
	full  chan []byte
	free  chan []byte
	buf   []byte // the buffer cur points into
	cur   []byte
	err   error
	errc  chan error
	stop  chan struct{}
	done  chan struct{} // closed when the goroutine has returned
	close sync.Once
}

func newReadAhead(r io.Reader, bufSize, n int) *readAhead {
	ra := &readAhead{
		full: make(chan []byte, n),
		free: make(chan []byte, n),
		errc: make(chan error, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	for range n {
		ra.free <- make([]byte, bufSize)
	}
	go func() {
		defer close(ra.done)
		defer close(ra.full)
		for {
			var b []byte
			select {
			case b = <-ra.free:
			case <-ra.stop:
				return
			}
			n, err := io.ReadFull(r, b[:cap(b)])
			if n > 0 {
				select {
				case ra.full <- b[:n]:
				case <-ra.stop:
					return
				}
			}
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			if err != nil {
				ra.errc <- err
				return
			}
		}
	}()
	return ra
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		if ra.buf != nil {
			ra.free <- ra.buf[:cap(ra.buf)]
			ra.buf, ra.cur = nil, nil
		}
		if ra.err != nil {
			return 0, ra.err
		}
		b, ok := <-ra.full
		if !ok {
			ra.err = <-ra.errc
			return 0, ra.err
		}
		ra.buf, ra.cur = b, b
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

// Close stops the goroutine and waits for it (a Read of r in progress
// ends first), so that r may be closed or read by others afterwards; it
// does not close r.
func (ra *readAhead) Close() error {
	ra.close.Do(func() { close(ra.stop) })
	<-ra.done
	return nil
}
