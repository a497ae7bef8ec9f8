// Package serve is what the benchmark's helper servers (memregistry,
// throttleproxy) share: listen, tell bench/fio/run.sh the address, serve
// until SIGINT or SIGTERM.
package serve

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Listen listens on addr (port 0: any free port) and, if addrFile is not
// "", writes the address listened on (host:port) to it, whole at once
// (through a rename), for run.sh to wait on.
func Listen(addr, addrFile string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if addrFile != "" {
		tmp := addrFile + ".tmp"
		err := os.WriteFile(tmp, []byte(l.Addr().String()+"\n"), 0o644)
		if err == nil {
			err = os.Rename(tmp, addrFile)
		}
		if err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

// UntilSignal serves h on l until SIGINT or SIGTERM, then shuts down,
// giving requests in flight 5 s. It returns why serving stopped, if it
// was not a signal, or a failure to shut down other than running out of
// those 5 s.
func UntilSignal(l net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
