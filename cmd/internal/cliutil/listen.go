package cliutil

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// ListenUnix listens on the unix socket path for the server named who,
// readable by its owner only from birth. It makes path's directory, and
// removes a socket a dead server left there (logged); a socket something
// still listens on is an error: another such server is running.
func ListenUnix(log zerolog.Logger, path, who string) (net.Listener, error) {
	if err := claimSocket(log, path, who); err != nil {
		return nil, err
	}
	old := syscall.Umask(0o077)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func claimSocket(log zerolog.Logger, path, who string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s is in use: another %s is running", path, who)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	log.Info().Str("socket", path).Msgf("removed a stale socket left by a %s that is gone", who)
	return nil
}

// CheckLoopback says whether addr (host:port) is on a loopback address;
// localhost counts.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("%s is not a loopback address", host)
}

// heapBase is the soft memory limit's part beyond the memory cache: the
// live set of a busy server (NBD read buffers up to their budget, fetches
// in flight: 65-80 MB with ten images read at once) and some room, so that
// collections do not run back to back.
const heapBase = 88 << 20

// SetMemoryLimit keeps the heap near what the server needs, not twice
// that: unless the user set GOMEMLIMIT, it asks the collector to work
// harder past a soft limit of heapBase plus the memory cache.
func SetMemoryLimit(memoryCache int64) {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(heapBase + memoryCache)
	}
}
