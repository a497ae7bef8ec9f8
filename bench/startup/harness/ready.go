package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// errNoReadyLine: the container exited without printing the ready line.
var errNoReadyLine = errors.New("container exited without printing the ready line")

// criLogReader reads a CRI container log as it grows: lines of
// "TIMESTAMP STREAM P|F CONTENT", the timestamp (RFC 3339, nanoseconds) set
// by containerd when it read the line from the container.
type criLogReader struct {
	path    string
	off     int64
	partial []byte // a line not yet ended
	content []string
}

// find reads what was appended since the last call and returns the
// timestamp of the first full line whose content is line.
func (r *criLogReader) find(line string) (time.Time, bool, error) {
	f, err := os.Open(r.path)
	if errors.Is(err, os.ErrNotExist) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, r.off, 1<<40))
	if err != nil {
		return time.Time{}, false, err
	}
	r.off += int64(len(b))
	b = append(r.partial, b...)
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		ts, content, ok := parseCRILine(string(b[:i]))
		b = b[i+1:]
		if !ok {
			continue
		}
		r.content = append(r.content, content)
		if content == line {
			r.partial = nil
			return ts, true, nil
		}
	}
	r.partial = append([]byte(nil), b...)
	return time.Time{}, false, nil
}

// output returns the content lines read so far, for an error.
func (r *criLogReader) output() string { return strings.Join(r.content, "\n") }

// parseCRILine splits a CRI log line; partial lines (tag P) are returned as
// they are, which is enough to find a short ready line.
func parseCRILine(l string) (time.Time, string, bool) {
	parts := strings.SplitN(l, " ", 4)
	if len(parts) < 3 {
		return time.Time{}, "", false
	}
	ts, err := time.Parse(time.RFC3339Nano, parts[0])
	if err != nil {
		return time.Time{}, "", false
	}
	content := ""
	if len(parts) == 4 {
		content = parts[3]
	}
	return ts, content, true
}

// waitReady polls the container's log every 5 ms until it holds the ready
// line, and returns the time containerd stamped on it. It fails if the
// container exits first or timeout passes.
func waitReady(ctx context.Context, c *criClient, id, logPath string, timeout time.Duration) (time.Time, error) {
	r := &criLogReader{path: logPath}
	deadline := time.Now().Add(timeout)
	lastState := time.Now()
	for {
		ts, ok, err := r.find(ReadyLine)
		if err != nil {
			return time.Time{}, fmt.Errorf("container log %s: %w", logPath, err)
		}
		if ok {
			return ts, nil
		}
		if time.Since(lastState) > 500*time.Millisecond {
			lastState = time.Now()
			state, code, err := c.state(ctx, id)
			if err != nil {
				return time.Time{}, err
			}
			if state == runtime.ContainerState_CONTAINER_EXITED {
				// It may have printed the line just before exiting.
				if ts, ok, _ := r.find(ReadyLine); ok {
					return ts, nil
				}
				return time.Time{}, fmt.Errorf("%w (exit code %d); its output:\n%s", errNoReadyLine, code, r.output())
			}
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("no ready line within %s; output so far:\n%s", timeout, r.output())
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}
