package main

import (
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// health says whether the parts of the agent are up.
type health struct {
	mu   sync.Mutex
	down map[string]string // part -> why
}

func (h *health) set(part string, up bool, why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down == nil {
		h.down = map[string]string{}
	}
	if up {
		delete(h.down, part)
	} else {
		h.down[part] = why
	}
}

func (h *health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(h.down) == 0 {
		w.Write([]byte("ok\n"))
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	for part, why := range h.down {
		w.Write([]byte(part + ": " + why + "\n"))
	}
}

// metricsHandler serves /healthz and /metrics.
func (a *agent) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(a.src.Collector(), a.sn.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if a.conv != nil {
		reg.MustRegister(a.conv.Collector())
	}
	if a.cri != nil {
		reg.MustRegister(a.cri.Collector())
	}
	mux := http.NewServeMux()
	mux.Handle("/healthz", &a.health)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}
