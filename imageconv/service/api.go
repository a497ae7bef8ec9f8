package service

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/sluice-project/sluice/imageconv/service/client"
)

// Bounds of request bodies: distribution sends envelopes of a few events
// (notifications.endpoints' threshold), a request names one image.
const (
	maxEnvelope = 4 << 20
	maxRequest  = 64 << 10
)

// Handler serves the service's HTTP API:
//   - POST /events: a registry notification envelope (distribution's,
//     application/vnd.docker.distribution.events.v1+json); 200 once its
//     push events are queued, 400 for a body that is not an envelope;
//   - POST /convert: {"image": "REGISTRY/REPOSITORY@sha256:..."} (or
//     :TAG); 202 queued, 200 already queued or running, 400 malformed,
//     403 a repository or registry the service does not convert;
//   - either: 503 when the queue is full or cannot be written;
//   - GET /healthz: 200 "ok" while it converts and can write its queue;
//   - GET /metrics: Prometheus metrics.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /events", s.serveEvents)
	mux.HandleFunc("POST "+client.Path, s.serveConvert)
	mux.HandleFunc("GET /healthz", s.serveHealth)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

// eventsAnswer is /events' JSON answer: how many events had each result.
type eventsAnswer struct {
	Results map[string]int `json:"results"`
}

func (s *Service) serveEvents(w http.ResponseWriter, r *http.Request) {
	log := zerolog.Ctx(s.ctx)
	events, err := decodeEnvelope(http.MaxBytesReader(w, r.Body, maxEnvelope))
	if err != nil {
		s.metrics.received.WithLabelValues("events", resultMalformed).Inc()
		log.Warn().Err(err).Str("remote", r.RemoteAddr).Str("content_type", r.Header.Get("Content-Type")).Msg("malformed notification refused")
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ans := eventsAnswer{Results: map[string]int{}}
	status := http.StatusOK
	for _, e := range events {
		key, result := s.o.eventJob(e)
		var err error
		if result == resultQueued {
			result, err = s.enqueue(key, "event")
		}
		ans.Results[result]++
		s.metrics.received.WithLabelValues("events", result).Inc()
		ev := log.Debug()
		switch result {
		case resultQueued:
			ev = log.Info()
		case resultMalformed:
			ev = log.Warn()
		case resultQueueFull, resultQueueError:
			ev, status = log.Error().Err(err), http.StatusServiceUnavailable
		}
		ev.Str("event", e.ID).Str("action", e.Action).Str("repository", e.Target.Repository).Str("digest", e.Target.Digest).
			Str("tag", e.Target.Tag).Str("media_type", e.Target.MediaType).Str("job", key).Str("result", result).Msg("registry event")
	}
	// 503 makes the registry send the envelope again: the jobs it queued
	// are deduplicated then.
	writeJSON(w, status, ans)
}

// convertAnswer is /convert's JSON answer.
type convertAnswer struct {
	Job    string `json:"job,omitempty"`
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
}

func (s *Service) serveConvert(w http.ResponseWriter, r *http.Request) {
	log := zerolog.Ctx(s.ctx)
	var req client.Request
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequest))
	err := dec.Decode(&req)
	var ref name.Reference
	if err == nil {
		ref, err = parseRequested(req.Image)
	}
	if err != nil {
		s.metrics.received.WithLabelValues("convert", resultMalformed).Inc()
		log.Warn().Err(err).Str("remote", r.RemoteAddr).Msg("malformed conversion request refused")
		writeJSON(w, http.StatusBadRequest, convertAnswer{Result: resultMalformed, Error: err.Error()})
		return
	}
	key, result := s.o.admit(ref)
	if result == resultQueued {
		result, err = s.enqueue(key, "request")
	}
	s.metrics.received.WithLabelValues("convert", result).Inc()
	ans := convertAnswer{Job: key, Result: result}
	status := http.StatusOK
	ev := log.Info()
	switch result {
	case resultQueued:
		status = http.StatusAccepted
	case resultRepo, resultRegistry:
		status, ev = http.StatusForbidden, log.Warn()
	case resultQueueFull, resultQueueError:
		status, ev = http.StatusServiceUnavailable, log.Error().Err(err)
		ans.Error = err.Error()
	}
	ev.Str("image", req.Image).Str("remote", r.RemoteAddr).Str("job", key).Str("result", result).Msg("conversion request")
	writeJSON(w, status, ans)
}

// parseRequested parses a requested image: a full reference naming its
// registry, with a tag or digest.
func parseRequested(image string) (name.Reference, error) {
	if image == "" {
		return nil, fmt.Errorf("%w: no \"image\"", errMalformed)
	}
	ref, err := name.ParseReference(image, name.StrictValidation)
	if err != nil {
		return nil, fmt.Errorf("%w: image %q: %v", errMalformed, image, err)
	}
	return ref, nil
}

func (s *Service) serveHealth(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := s.healthy(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	queued, running := s.queue.depth()
	fmt.Fprintf(w, "ok\nqueued %d\nrunning %d\n", queued, running)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away, or will read a short answer
}
