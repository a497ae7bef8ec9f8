package crikeychain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxMessage is the largest CRI message passed on, as kubelet's own limit
// (ListImages of a node with many images passes gRPC's 4 MiB default).
const maxMessage = 16 << 20

// Proxy is a CRI image service that forwards every call to another one
// (containerd's) and records each PullImage's credentials in a Store
// before forwarding it. Errors of the backend reach the caller as they
// are (the same gRPC status).
type Proxy struct {
	runtime.UnimplementedImageServiceServer
	ctx     context.Context // its logger
	store   *Store
	conn    *grpc.ClientConn
	backend runtime.ImageServiceClient

	onCredentials func(image string)

	pulls, pullsWithCredentials atomic.Uint64
}

// ProxyOption configures NewProxy.
type ProxyOption func(*Proxy)

// OnCredentials calls f with the (normalized) image of each pull whose
// credentials were recorded, before the pull is forwarded: the agent's
// snapshotter then forgets that the image could not be streamed for want
// of them.
func OnCredentials(f func(image string)) ProxyOption { return func(p *Proxy) { p.onCredentials = f } }

// NewProxy returns a proxy recording into store and forwarding to the CRI
// image service on the unix socket backend. It connects on first use, so
// containerd may start after it. ctx carries the logger.
func NewProxy(ctx context.Context, store *Store, backend string, opts ...ProxyOption) (*Proxy, error) {
	conn, err := grpc.NewClient("unix://"+backend,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)))
	if err != nil {
		return nil, fmt.Errorf("CRI image service %s: %w", backend, err)
	}
	p := &Proxy{ctx: ctx, store: store, conn: conn, backend: runtime.NewImageServiceClient(conn)}
	for _, o := range opts {
		o(p)
	}
	return p, nil
}

// Register serves the proxy on s.
func (p *Proxy) Register(s *grpc.Server) { runtime.RegisterImageServiceServer(s, p) }

// ServerOptions are the gRPC server options the proxy needs (its message
// size limit).
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(maxMessage), grpc.MaxSendMsgSize(maxMessage)}
}

// Close closes the connection to the backend.
func (p *Proxy) Close() error { return p.conn.Close() }

// PullImage records the request's credentials under its image, then
// forwards it: the snapshotter's lookups during the pull find them.
func (p *Proxy) PullImage(ctx context.Context, r *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	image := r.GetImage().GetImage()
	p.pulls.Add(1)
	recorded, err := p.store.Put(image, r.GetAuth())
	if recorded {
		p.pullsWithCredentials.Add(1)
		if p.onCredentials != nil {
			key, _ := Normalize(image) // it parsed: Put recorded it
			p.onCredentials(key)
		}
	}
	// Never the request itself: its String() shows the password.
	ev := zerolog.Ctx(p.ctx).Debug().Str("image", image).Bool("credentials", recorded)
	if err != nil {
		// containerd will refuse the reference too, and say why.
		ev = ev.AnErr("reference", err)
	}
	ev.Msg("CRI pull")
	return p.backend.PullImage(ctx, r)
}

// RemoveImage forgets the image's credentials and forwards the request.
func (p *Proxy) RemoveImage(ctx context.Context, r *runtime.RemoveImageRequest) (*runtime.RemoveImageResponse, error) {
	p.store.Remove(r.GetImage().GetImage())
	return p.backend.RemoveImage(ctx, r)
}

func (p *Proxy) ListImages(ctx context.Context, r *runtime.ListImagesRequest) (*runtime.ListImagesResponse, error) {
	return p.backend.ListImages(ctx, r)
}

func (p *Proxy) ImageStatus(ctx context.Context, r *runtime.ImageStatusRequest) (*runtime.ImageStatusResponse, error) {
	return p.backend.ImageStatus(ctx, r)
}

func (p *Proxy) ImageFsInfo(ctx context.Context, r *runtime.ImageFsInfoRequest) (*runtime.ImageFsInfoResponse, error) {
	return p.backend.ImageFsInfo(ctx, r)
}

// StreamImages forwards the stream message by message.
func (p *Proxy) StreamImages(r *runtime.StreamImagesRequest, out grpc.ServerStreamingServer[runtime.StreamImagesResponse]) error {
	in, err := p.backend.StreamImages(out.Context(), r)
	if err != nil {
		return err
	}
	for {
		m, err := in.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := out.Send(m); err != nil {
			return err
		}
	}
}

// Counts says what the proxy has done since it started.
type Counts struct {
	// Pulls are the PullImage calls forwarded; PullsWithCredentials those
	// whose credentials were recorded.
	Pulls, PullsWithCredentials uint64
	// Images is the number of images whose credentials are held now.
	Images int
}

// Counts returns the proxy's counts.
func (p *Proxy) Counts() Counts {
	return Counts{Pulls: p.pulls.Load(), PullsWithCredentials: p.pullsWithCredentials.Load(), Images: p.store.Len()}
}

var (
	descPulls = prometheus.NewDesc("sluice_cri_pulls_total",
		"CRI image pulls forwarded to containerd by the CRI keychain proxy, by whether they carried credentials (which are kept for the image's lookups and fetches).",
		[]string{"credentials"}, nil)
	descImages = prometheus.NewDesc("sluice_cri_credential_images",
		"Images whose pull credentials the CRI keychain holds (in memory).", nil, nil)
)

// Collector returns a Prometheus collector of Counts, read at scrape time.
// Its labels never hold an image or a credential.
func (p *Proxy) Collector() prometheus.Collector { return collector{p} }

type collector struct{ p *Proxy }

func (collector) Describe(ch chan<- *prometheus.Desc) { ch <- descPulls; ch <- descImages }

func (k collector) Collect(ch chan<- prometheus.Metric) {
	n := k.p.Counts()
	ch <- prometheus.MustNewConstMetric(descPulls, prometheus.CounterValue, float64(n.PullsWithCredentials), "yes")
	ch <- prometheus.MustNewConstMetric(descPulls, prometheus.CounterValue, float64(n.Pulls-n.PullsWithCredentials), "no")
	ch <- prometheus.MustNewConstMetric(descImages, prometheus.GaugeValue, float64(n.Images))
}
