package main

import (
	"regexp"
	"sync"
	"sync/atomic"
)

var blobPath = regexp.MustCompile(`^/v2/.+/blobs/([a-z0-9]+:[a-f0-9]+)$`)

// blobDigest returns the digest a blob GET names, or "" for other paths.
func blobDigest(path string) string {
	if m := blobPath.FindStringSubmatch(path); m != nil {
		return m[1]
	}
	return ""
}

// stats counts requests and the body bytes sent, blobs per digest.
type stats struct {
	requests  atomic.Int64
	bodyBytes atomic.Int64

	mu    sync.Mutex
	blobs map[string]*blobStats
}

type blobStats struct {
	Requests int64 `json:"requests"`
	Bytes    int64 `json:"bytes"`
}

// Snapshot is what /_stats answers.
type Snapshot struct {
	// Requests counts every proxied request; BodyBytes every response body
	// byte sent.
	Requests  int64 `json:"requests"`
	BodyBytes int64 `json:"body_bytes"`
	// BlobRequests and BlobBytes count successful blob GETs (200 and 206)
	// and their body bytes; Blobs breaks them down by digest.
	BlobRequests int64                `json:"blob_requests"`
	BlobBytes    int64                `json:"blob_bytes"`
	Blobs        map[string]blobStats `json:"blobs"`
}

func newStats() *stats { return &stats{blobs: map[string]*blobStats{}} }

func (s *stats) request() { s.requests.Add(1) }

// counter returns the function that counts the body bytes of one response,
// a blob's if digest is not empty.
func (s *stats) counter(digest string) func(int64) {
	if digest == "" {
		return func(n int64) { s.bodyBytes.Add(n) }
	}
	s.mu.Lock()
	b := s.blobs[digest]
	if b == nil {
		b = &blobStats{}
		s.blobs[digest] = b
	}
	b.Requests++
	s.mu.Unlock()
	return func(n int64) {
		s.bodyBytes.Add(n)
		s.mu.Lock()
		b.Bytes += n
		s.mu.Unlock()
	}
}

func (s *stats) snapshot() Snapshot {
	out := Snapshot{Requests: s.requests.Load(), BodyBytes: s.bodyBytes.Load(), Blobs: map[string]blobStats{}}
	s.mu.Lock()
	defer s.mu.Unlock()
	for d, b := range s.blobs {
		out.Blobs[d] = *b
		out.BlobRequests += b.Requests
		out.BlobBytes += b.Bytes
	}
	return out
}
