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
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/sluice-project/sluice/bench/fio/internal/serve"
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
	l, err := serve.Listen(listen, addrFile)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "memregistry: serving on %s\n", l.Addr())
	return serve.UntilSignal(l, newHandler())
}

// newHandler is the registry: blobs in memory, referrers API on, request
// logging off (it would cost more than serving). Blob answers say
// "Accept-Ranges: bytes", as distribution's do: the registry serves ranges,
// and nbdkit's curl plugin (the cold phase's lazy peer) will not open a URL
// whose HEAD does not say so.
func newHandler() http.Handler {
	reg := registry.New(
		registry.WithBlobHandler(registry.NewInMemoryBlobHandler()),
		registry.WithReferrersSupport(true),
		registry.Logger(log.New(io.Discard, "", 0)),
	)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if (r.Method == http.MethodGet || r.Method == http.MethodHead) && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			w.Header().Set("Accept-Ranges", "bytes")
			if r.Method == http.MethodGet && r.Header.Get("Range") != "" {
				clampRange(reg, r)
			}
		}
		reg.ServeHTTP(w, r)
	})
}

// clampRange rewrites a blob GET's "Range: bytes=FIRST-LAST" whose LAST is
// at or past the blob's end to end at its last byte, as RFC 9110 has a
// server read it and distribution's registry does; go-containerregistry's
// registry answers 416 instead. nbdkit 1.32's curl plugin (the cold
// phase's lazy peer) asks for one byte past every range it reads, so its
// read of a blob's last bytes failed with EIO here and not on
// docker-registry.
func clampRange(reg http.Handler, r *http.Request) {
	var first, last int64
	if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &first, &last); err != nil {
		return
	}
	head := httptest.NewRecorder()
	hr := r.Clone(r.Context())
	hr.Method = http.MethodHead
	hr.Header.Del("Range")
	reg.ServeHTTP(head, hr)
	size, err := strconv.ParseInt(head.Header().Get("Content-Length"), 10, 64)
	if err != nil || head.Code != http.StatusOK || first >= size || last < size {
		return
	}
	r.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", first, size-1))
}
