package harness

import (
	"context"
	"fmt"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criClient talks to containerd's CRI plugin as kubelet does.
type criClient struct {
	conn   *grpc.ClientConn
	rt     runtime.RuntimeServiceClient
	images runtime.ImageServiceClient
	pods   []string
}

func dialCRI(address string) (*criClient, error) {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("CRI at %s: %w", address, err)
	}
	return &criClient{conn: conn, rt: runtime.NewRuntimeServiceClient(conn), images: runtime.NewImageServiceClient(conn)}, nil
}

func (c *criClient) close() { c.conn.Close() }

// pod is a running pod sandbox.
type pod struct {
	id     string
	config *runtime.PodSandboxConfig
	logDir string
}

// runPod starts a host-network pod (there is no CNI here) whose container
// logs go below logDir.
func (c *criClient) runPod(ctx context.Context, name, logDir string) (*pod, error) {
	cfg := &runtime.PodSandboxConfig{
		Metadata:     &runtime.PodSandboxMetadata{Name: name, Uid: "uid-" + name, Namespace: "sluice-bench"},
		LogDirectory: logDir,
		Linux: &runtime.LinuxPodSandboxConfig{SecurityContext: &runtime.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtime.NamespaceOption{Network: runtime.NamespaceMode_NODE},
		}},
	}
	resp, err := c.rt.RunPodSandbox(ctx, &runtime.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return nil, fmt.Errorf("RunPodSandbox %s: %w", name, err)
	}
	c.pods = append(c.pods, resp.PodSandboxId)
	return &pod{id: resp.PodSandboxId, config: cfg, logDir: logDir}, nil
}

func (c *criClient) pull(ctx context.Context, p *pod, ref string) error {
	_, err := c.images.PullImage(ctx, &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: ref}, SandboxConfig: p.config})
	if err != nil {
		return fmt.Errorf("PullImage %s: %w", ref, err)
	}
	return nil
}

// create creates a container of ref in p running command, and returns its
// ID and the path of its CRI log.
func (c *criClient) create(ctx context.Context, p *pod, name, ref string, command []string) (id, logPath string, err error) {
	cfg := &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: name},
		Image:    &runtime.ImageSpec{Image: ref},
		Command:  command,
		LogPath:  name + ".log",
		Linux:    &runtime.LinuxContainerConfig{},
	}
	resp, err := c.rt.CreateContainer(ctx, &runtime.CreateContainerRequest{PodSandboxId: p.id, Config: cfg, SandboxConfig: p.config})
	if err != nil {
		return "", "", fmt.Errorf("CreateContainer %s of %s: %w", name, ref, err)
	}
	return resp.ContainerId, filepath.Join(p.logDir, cfg.LogPath), nil
}

func (c *criClient) start(ctx context.Context, id string) error {
	if _, err := c.rt.StartContainer(ctx, &runtime.StartContainerRequest{ContainerId: id}); err != nil {
		return fmt.Errorf("StartContainer %s: %w", id, err)
	}
	return nil
}

// state returns a container's state and exit code.
func (c *criClient) state(ctx context.Context, id string) (runtime.ContainerState, int32, error) {
	resp, err := c.rt.ContainerStatus(ctx, &runtime.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		return 0, 0, fmt.Errorf("ContainerStatus %s: %w", id, err)
	}
	return resp.Status.State, resp.Status.ExitCode, nil
}

// removePods stops and removes the pods this client started (and so their
// containers), ignoring errors: it is cleanup.
func (c *criClient) removePods(ctx context.Context) {
	for _, id := range c.pods {
		_, _ = c.rt.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: id})
		_, _ = c.rt.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: id})
	}
	c.pods = nil
}
