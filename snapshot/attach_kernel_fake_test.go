package snapshot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
)

// fileExportServer is an ExportServer for the kernel attacher's tests: it
// serves one file as one export, a request at a time, with the simple
// replies of the NBD protocol (the project's own server is tested with the
// kernel in test/vm). Stop stands for the agent going away: it closes
// every connection and serves nothing more.
type fileExportServer struct {
	name string
	f    *os.File
	size int64

	mu      sync.Mutex
	stopped bool
	conns   map[net.Conn]bool
}

func serveFile(t *testing.T, img, name string) *fileExportServer {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	s := &fileExportServer{name: name, f: f, size: fi.Size(), conns: map[net.Conn]bool{}}
	t.Cleanup(func() {
		s.Stop()
		f.Close()
	})
	return s
}

func (s *fileExportServer) Export() Export { return Export{Name: s.name} }

func (s *fileExportServer) ExportSize(name string) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || name != s.name {
		return 0, fmt.Errorf("export %q: not served", name)
	}
	return s.size, nil
}

// Stop closes every connection; nothing is served after it.
func (s *fileExportServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	for c := range s.conns {
		c.Close()
	}
}

// active counts the connections being served.
func (s *fileExportServer) active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// dropOne closes one connection, as a server bug or a crash of one
// connection's goroutine would.
func (s *fileExportServer) dropOne() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
		return
	}
}

const (
	nbdRequestMagic = 0x25609513
	nbdReplyMagic   = 0x67446698
	nbdCmdRead      = 0
	nbdCmdDisc      = 2
	nbdCmdFlush     = 3
	nbdEINVAL       = 22
	nbdEPERM        = 1
)

func (s *fileExportServer) ServeTransmission(ctx context.Context, c net.Conn, name string) error {
	defer c.Close()
	s.mu.Lock()
	if s.stopped || name != s.name {
		s.mu.Unlock()
		return fmt.Errorf("export %q: not served", name)
	}
	s.conns[c] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	var hdr [28]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if binary.BigEndian.Uint32(hdr[0:]) != nbdRequestMagic {
			return errors.New("bad request magic")
		}
		typ := binary.BigEndian.Uint16(hdr[6:])
		handle := hdr[8:16]
		off := int64(binary.BigEndian.Uint64(hdr[16:]))
		n := int64(binary.BigEndian.Uint32(hdr[24:]))
		var errno uint32
		var data []byte
		switch typ {
		case nbdCmdRead:
			if off < 0 || n <= 0 || off+n > s.size {
				errno = nbdEINVAL
				break
			}
			data = make([]byte, n)
			if _, err := s.f.ReadAt(data, off); err != nil {
				errno, data = 5, nil // EIO
			}
		case nbdCmdDisc:
			return nil
		case nbdCmdFlush:
		default:
			errno = nbdEPERM
		}
		reply := make([]byte, 16, 16+len(data))
		binary.BigEndian.PutUint32(reply[0:], nbdReplyMagic)
		binary.BigEndian.PutUint32(reply[4:], errno)
		copy(reply[8:], handle)
		if _, err := c.Write(append(reply, data...)); err != nil {
			return err
		}
	}
}
