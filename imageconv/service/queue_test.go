package service

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestQueueDedupesAndPersists(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	q, err := openQueue(ctx, dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range []string{"r/a@sha256:1", "r/b@sha256:2", "r/a@sha256:1"} {
		added, err := q.add(&job{Key: k, Queued: time.Unix(int64(i), 0)})
		if err != nil || added != (i < 2) {
			t.Errorf("add %s: %v, %v", k, added, err)
		}
	}
	j, err := q.next(ctx)
	if err != nil || j.Key != "r/a@sha256:1" {
		t.Fatalf("next: %+v, %v", j, err)
	}
	if added, _ := q.add(&job{Key: j.Key}); added {
		t.Error("a running job's key was queued again")
	}
	if _, err := q.add(&job{Key: "r/c@sha256:3", Queued: time.Unix(3, 0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.add(&job{Key: "r/d@sha256:4"}); !errors.Is(err, ErrQueueFull) {
		t.Errorf("a fourth job: %v, want ErrQueueFull", err)
	}
	// A crash now: a, running, b and c queued; and a write cut short.
	os.WriteFile(filepath.Join(dir, ".tmp-999"), []byte("{"), 0o600)
	os.WriteFile(filepath.Join(dir, "0123.json"), []byte("not json"), 0o600)
	q2, err := openQueue(ctx, dir, 3)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for range 3 {
		j, err := q2.next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, j.Key)
		if err := q2.finish(j); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Join(keys, " ") != "r/a@sha256:1 r/b@sha256:2 r/c@sha256:3" {
		t.Errorf("after a restart the jobs run as %q", keys)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "0123.json.bad" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("left in the queue dir: %q, want only the unreadable file set aside", names)
	}
}

func TestQueueRetryWaits(t *testing.T) {
	q, err := openQueue(context.Background(), t.TempDir(), 10)
	if err != nil {
		t.Fatal(err)
	}
	q.add(&job{Key: "r/a@sha256:1"})
	j, _ := q.next(context.Background())
	if err := q.retry(j, time.Hour); err != nil {
		t.Fatal(err)
	}
	if j.Attempts != 1 {
		t.Errorf("attempts %d", j.Attempts)
	}
	q.add(&job{Key: "r/b@sha256:2"})
	j2, _ := q.next(context.Background())
	if j2.Key != "r/b@sha256:2" {
		t.Errorf("next gave %s while a waits an hour", j2.Key)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := q.next(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("next with only a waiting job: %v", err)
	}
}
