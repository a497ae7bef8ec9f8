// Command memregistry is an OCI registry with near-zero service time:
// go-containerregistry's in-process registry (pkg/registry) keeping blobs
// in memory, with the referrers API. bench/fio/run.sh puts it behind
// throttleproxy next to docker-registry, so the cold first-byte budget
// (RTT + chunk transfer + 1 ms) is checked in the conditions it models: a
// registry whose own time per request is negligible against the RTT.
//
//	memregistry --listen 127.0.0.1:0 --addr-file /tmp/memregistry.addr
//
// Everything is lost when it stops; it is a benchmark fixture, not a store.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (port 0: any free port; see --addr-file)")
	addrFile := flag.String("addr-file", "", "write the address listened on (host:port) to this file once ready")
	flag.Parse()
	if err := run(*listen, *addrFile); err != nil {
		fmt.Fprintln(os.Stderr, "memregistry:", err)
		os.Exit(1)
	}
}

func run(listen, addrFile string) error {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	if addrFile != "" {
		tmp := addrFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(l.Addr().String()+"\n"), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, addrFile); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "memregistry: serving on %s\n", l.Addr())
	srv := &http.Server{Handler: newHandler(), ReadHeaderTimeout: 30 * time.Second}
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

// newHandler is the registry: blobs in memory, referrers API on, request
// logging off (it would cost more than serving).
func newHandler() http.Handler {
	return registry.New(
		registry.WithBlobHandler(registry.NewInMemoryBlobHandler()),
		registry.WithReferrersSupport(true),
		registry.Logger(log.New(io.Discard, "", 0)),
	)
}
