package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/sluice-project/sluice/test/testutil"
)

// run executes the CLI with args, with temporary files going to tmp.
func run(t *testing.T, tmp string, args ...string) error {
	t.Helper()
	t.Setenv("TMPDIR", tmp)
	cmd := newRoot()
	cmd.SetArgs(args)
	cmd.SetOut(io.Discard)
	return cmd.ExecuteContext(context.Background())
}

func TestCLI(t *testing.T) {
	host := testutil.Registry(t)
	img, err := random.Image(1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/cli/app:v1"
	r, _ := name.ParseReference(ref, name.Insecure)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	noLeftovers := func(t *testing.T) {
		t.Helper()
		if left, _ := os.ReadDir(tmp); len(left) != 0 {
			t.Errorf("left in TMPDIR: %v", left)
		}
	}

	t.Run("bad arguments", func(t *testing.T) {
		for args, want := range map[string]string{
			"convert":                            "needs IMAGE",
			"convert --chunk-size 3000 x/y:z":    "--chunk-size",
			"convert --chunk-size lots x/y:z":    "--chunk-size",
			"convert --platform linux x/y:z":     "--platform",
			"export " + ref:                      "needs IMAGE and FILE",
			"convert --log-level loud " + ref:    "--log-level",
			"convert --plain-http " + host + "/": "image reference",
		} {
			err := run(t, tmp, strings.Fields(args)...)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("sluice %s: %v, want an error about %s", args, err, want)
			}
		}
		noLeftovers(t)
	})
	t.Run("image that does not exist", func(t *testing.T) {
		err := run(t, tmp, "convert", "--plain-http", host+"/cli/nope:v1")
		if err == nil || !strings.Contains(err.Error(), "NAME_UNKNOWN") {
			t.Fatalf("got %v", err)
		}
		noLeftovers(t)
	})
	t.Run("inspect before convert", func(t *testing.T) {
		err := run(t, tmp, "inspect", "--plain-http", ref)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 3 || !strings.Contains(err.Error(), "sluice convert") {
			t.Fatalf("got %v, want exit status 3 with advice", err)
		}
	})
	t.Run("convert, inspect, export", func(t *testing.T) {
		if err := run(t, tmp, "convert", "--plain-http", "--chunk-size", "64KiB", ref); err != nil {
			t.Fatal(err)
		}
		noLeftovers(t)
		out := captureStdout(t, func() {
			if err := run(t, tmp, "inspect", "--plain-http", "--chunks", ref); err != nil {
				t.Fatal(err)
			}
		})
		for _, want := range []string{"ext4 size", "64.0 KiB", "stored bytes", "0 sha256:"} {
			if !strings.Contains(out, want) {
				t.Errorf("inspect output lacks %q:\n%s", want, out)
			}
		}
		file := filepath.Join(t.TempDir(), "rootfs.ext4")
		if err := run(t, tmp, "export", "--plain-http", ref, file); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(file); err != nil || fi.Size() == 0 {
			t.Fatalf("export wrote %v, %v", fi, err)
		}
		if err := run(t, tmp, "export", "--plain-http", ref, file); err == nil {
			t.Error("export overwrote an existing file")
		}
	})
}

func captureStdout(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		var b bytes.Buffer
		io.Copy(&b, r)
		done <- b.String()
	}()
	f()
	w.Close()
	os.Stdout = old
	return <-done
}
