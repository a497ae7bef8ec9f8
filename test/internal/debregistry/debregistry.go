// Package debregistry runs Debian's docker-registry (distribution 2.8) for
// end-to-end tests: a real registry, with filesystem storage in a
// directory of the test's, on a free 127.0.0.1 port. With WithAccessLog it
// keeps an access log, so that a test can assert which blobs were
// downloaded.
package debregistry

import (
	"bufio"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-project/sluice/test/internal/proc"
)

// Binary is the registry's command, from Debian's docker-registry package.
const Binary = "docker-registry"

// Registry is a running docker-registry process.
type Registry struct {
	// Addr is its host:port on 127.0.0.1.
	Addr string
	// Storage is the root directory of its filesystem storage.
	Storage string
	proc    *proc.Proc
	log     string
	access  string // the access log; "" without WithAccessLog
}

type options struct {
	accessLog     bool
	addr          string
	notifications string
	htpasswd      string
	proxy         string
}

// Option configures Start.
type Option func(*options)

// WithAccessLog turns the registry's access log on; Requests reads it.
func WithAccessLog() Option { return func(o *options) { o.accessLog = true } }

// WithAddr makes the registry listen on addr (127.0.0.1:PORT) instead of a
// free port: to start a stopped registry again where it was.
func WithAddr(addr string) Option { return func(o *options) { o.addr = addr } }

// WithNotifications adds snippet, a top-level "notifications:" section of
// distribution's config (such as scripts/convert-service's
// registry-notifications.yml with its URL filled in), to the registry's
// config: it then sends its events there.
func WithNotifications(snippet string) Option { return func(o *options) { o.notifications = snippet } }

// WithHtpasswd makes the registry require the users of the htpasswd file
// at path (bcrypt), over plain HTTP.
func WithHtpasswd(path string) Option { return func(o *options) { o.htpasswd = path } }

// WithProxy makes the registry a pull-through cache of the registry at
// remoteURL (http://HOST:PORT): distribution's proxy.remoteurl. It serves
// only pulls; a blob it lacks it streams from remoteURL whole (200, any
// Range ignored) while storing it, and serves from its store (Range
// honoured) once stored.
func WithProxy(remoteURL string) Option { return func(o *options) { o.proxy = remoteURL } }

// Start runs docker-registry with its storage, config and logs under dir
// and waits until it answers /v2/. Starting it again on the same dir keeps
// its storage (and appends to its access log).
func Start(dir string, opts ...Option) (*Registry, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if _, err := exec.LookPath(Binary); err != nil {
		return nil, err
	}
	addr := o.addr
	if addr == "" {
		port, err := proc.FreePort()
		if err != nil {
			return nil, err
		}
		addr = fmt.Sprintf("127.0.0.1:%d", port)
	}
	storage := filepath.Join(dir, "storage")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, err
	}
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: %t
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, !o.accessLog, storage, addr)
	if o.htpasswd != "" {
		config += fmt.Sprintf("auth:\n  htpasswd:\n    realm: sluice-test\n    path: %s\n", o.htpasswd)
	}
	if o.proxy != "" {
		config += fmt.Sprintf("proxy:\n  remoteurl: %s\n", o.proxy)
	}
	config += o.notifications
	cfgPath := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "registry.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(Binary, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	r := &Registry{Addr: addr, Storage: storage, log: logPath}
	if o.accessLog {
		// distribution writes its access log (combined log format) to
		// stdout and its other logs to stderr.
		r.access = filepath.Join(dir, "access.log")
		accessFile, err := os.OpenFile(r.access, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		defer accessFile.Close()
		cmd.Stdout = accessFile
	}
	if r.proc, err = proc.Start(cmd); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || (o.htpasswd != "" && resp.StatusCode == http.StatusUnauthorized) {
				return r, nil
			}
		}
		select {
		case <-r.proc.Done():
			return nil, fmt.Errorf("docker-registry exited during startup: %s", r.LogTail())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.Stop()
			return nil, fmt.Errorf("docker-registry did not answer on %s within 20 s: %s", addr, r.LogTail())
		}
	}
}

// Stop ends the registry process (by its PID) and waits for it.
func (r *Registry) Stop() { r.proc.Stop(10 * time.Second) }

// LogTail returns the end of the registry's log.
func (r *Registry) LogTail() string { return proc.LogTail(r.log, 20) }

// Request is one request of the access log.
type Request struct {
	Method string
	Path   string // without the query
	Status int
	// Bytes is the size of the body sent (what the handler wrote; less
	// than the blob when the client hung up).
	Bytes int64
	// UserAgent is the client's User-Agent ("sluice", "containerd/...",
	// or Go's default for another registry's proxy).
	UserAgent string
}

// Blob returns the repository and digest of a blob request
// (/v2/REPO/blobs/DIGEST), or "", "" for any other request.
func (q Request) Blob() (repo, digest string) {
	rest, ok := strings.CutPrefix(q.Path, "/v2/")
	if !ok {
		return "", ""
	}
	i := strings.LastIndex(rest, "/blobs/")
	if i <= 0 || strings.Contains(rest[i+len("/blobs/"):], "/") {
		return "", ""
	}
	return rest[:i], rest[i+len("/blobs/"):]
}

func (q Request) String() string { return fmt.Sprintf("%s %s %d", q.Method, q.Path, q.Status) }

// combined matches the request line and status of a combined-log-format line.
var combined = regexp.MustCompile(`"([A-Z]+) ([^ "?]+)(?:\?[^ "]*)? HTTP/[0-9.]+" ([0-9]{3}) ([0-9]+|-) "[^"]*" "([^"]*)"`)

// Requests returns the requests the registry has answered, oldest first,
// from the from-th on: pass the length of an earlier answer to get only
// what came after it. It needs WithAccessLog.
func (r *Registry) Requests(from int) ([]Request, error) {
	if r.access == "" {
		return nil, errors.New("registry started without WithAccessLog")
	}
	f, err := os.Open(r.access)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Request
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := combined.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		status, _ := strconv.Atoi(m[3])
		size, _ := strconv.ParseInt(m[4], 10, 64) // "-": 0
		out = append(out, Request{Method: m[1], Path: m[2], Status: status, Bytes: size, UserAgent: m[5]})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out[min(from, len(out)):], nil
}
