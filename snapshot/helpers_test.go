package snapshot

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/test/testutil/leakcheck"
)

// testContext carries a logger writing to the test's log.
func testContext(t *testing.T) context.Context {
	l := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel)
	return l.WithContext(context.Background())
}

// tempDir is a short directory under /tmp: the paths of unix sockets and
// of overlay lowerdir options stay short.
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sluice-snap-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// buildExt4 makes an ext4 image with 4 KiB blocks (as the converter
// writes, and as the kernel attacher's devices have) holding the files of
// tree (path -> content; a path ending in "/" is a directory).
func buildExt4(t *testing.T, tree map[string]string) string {
	t.Helper()
	dir := tempDir(t)
	src := filepath.Join(dir, "src")
	writeTree(t, src, tree)
	img := filepath.Join(dir, "image.ext4")
	if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", src, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
	return img
}

func writeTree(t *testing.T, root string, tree map[string]string) {
	t.Helper()
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range tree {
		p := filepath.Join(root, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// nbdkit is a reference NBD server serving a file read-only on a socket.
type nbdkit struct {
	cmd    *exec.Cmd
	export Export
}

func startNbdkit(t *testing.T, file string) *nbdkit {
	t.Helper()
	return startNbdkitAt(t, file, filepath.Join(tempDir(t), "nbd.sock"))
}

// startNbdkitAt serves file on sock, replacing a stale socket file (nbdkit
// leaves it behind when killed).
func startNbdkitAt(t *testing.T, file, sock string) *nbdkit {
	t.Helper()
	os.Remove(sock)
	cmd := exec.Command("nbdkit", "-f", "-r", "-U", sock, "file", file)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("nbdkit: %v", err)
	}
	k := &nbdkit{cmd: cmd, export: Export{Socket: sock, Name: "image"}}
	t.Cleanup(k.stop)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return k
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdkit did not listen on %s: %s", sock, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (k *nbdkit) Export() Export { return k.export }
func (k *nbdkit) Stop()          { k.stop() }

func (k *nbdkit) stop() {
	if k.cmd.ProcessState == nil {
		k.cmd.Process.Kill()
		k.cmd.Wait()
	}
}

// leaks lists mounts, loop devices and processes (nbdfuse, nbdkit) that
// refer to dir: what a test must not leave behind.
func leaks(t *testing.T, dir string) []string {
	t.Helper()
	found, err := leakcheck.Find(dir)
	if err != nil {
		t.Fatal(err)
	}
	if found.Empty() {
		return nil
	}
	return strings.Split(found.String(), "\n")
}

func assertNoLeaks(t *testing.T, dir string) {
	t.Helper()
	// Processes exit shortly after their FUSE mount goes.
	var left []string
	for deadline := time.Now().Add(5 * time.Second); ; {
		if left = leaks(t, dir); len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, l := range left {
		t.Errorf("left behind: %s", l)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
