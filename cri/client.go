// Package cri talks to the node's container runtime through the CRI v1 API,
// the same API and the same way the kubelet does.
package cri

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// DefaultEndpoints are tried in order when no endpoint is configured:
// the sockets of noderuntime.Layouts (standard containerd, k3s and RKE2,
// microk8s), then CRI-O's and cri-dockerd's.
var DefaultEndpoints = []string{
	"unix:///run/containerd/containerd.sock",
	"unix:///run/k3s/containerd/containerd.sock",
	"unix:///var/snap/microk8s/common/run/containerd.sock",
	"unix:///run/crio/crio.sock",
	"unix:///var/run/cri-dockerd.sock",
}

// EndpointEnv names the environment variable crictl and the kubelet read.
const EndpointEnv = "CONTAINER_RUNTIME_ENDPOINT"

// maxMsgSize matches crictl and the kubelet: ListImages on a busy node
// exceeds gRPC's 4 MiB default.
const maxMsgSize = 16 << 20

// UnreachableError says that no runtime answered, and where we looked.
type UnreachableError struct {
	Tried []string
	Err   error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("container runtime unreachable (tried %s): %v", strings.Join(e.Tried, ", "), e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Client is a connection to one runtime's CRI image and runtime services.
type Client struct {
	Endpoint       string
	RuntimeName    string
	RuntimeVersion string

	conn    *grpc.ClientConn
	images  runtimeapi.ImageServiceClient
	runtime runtimeapi.RuntimeServiceClient
}

// Connect finds the runtime: endpoint if set, else $CONTAINER_RUNTIME_ENDPOINT,
// else the first of DefaultEndpoints that answers. It returns a client whose
// runtime has answered a CRI v1 Version call.
func Connect(ctx context.Context, endpoint string) (*Client, error) {
	if endpoint == "" {
		endpoint = os.Getenv(EndpointEnv)
	}
	if endpoint != "" {
		c, err := dial(ctx, endpoint, 10*time.Second)
		if err != nil {
			return nil, &UnreachableError{Tried: []string{endpoint}, Err: err}
		}
		return c, nil
	}
	var errs []error
	for _, ep := range DefaultEndpoints {
		if _, err := os.Stat(strings.TrimPrefix(ep, "unix://")); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ep, err))
			continue
		}
		c, err := dial(ctx, ep, 2*time.Second)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, &UnreachableError{Tried: DefaultEndpoints, Err: errors.Join(errs...)}
}

func dial(ctx context.Context, endpoint string, timeout time.Duration) (*Client, error) {
	if !strings.HasPrefix(endpoint, "unix://") {
		if !strings.HasPrefix(endpoint, "/") {
			return nil, fmt.Errorf("endpoint %q: only unix sockets are supported", endpoint)
		}
		endpoint = "unix://" + endpoint
	}
	conn, err := grpc.NewClient(endpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize), grpc.MaxCallSendMsgSize(maxMsgSize)),
		// The connect backoff crictl and the kubelet use, so that a runtime
		// restart is picked up within seconds.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", endpoint, err)
	}
	c := &Client{
		Endpoint: endpoint,
		conn:     conn,
		images:   runtimeapi.NewImageServiceClient(conn),
		runtime:  runtimeapi.NewRuntimeServiceClient(conn),
	}
	vctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// WaitForReady rides out a socket that exists but whose server is still
	// starting, as after a runtime restart.
	v, err := c.runtime.Version(vctx, &runtimeapi.VersionRequest{}, grpc.WaitForReady(true))
	if err != nil {
		conn.Close()
		if status.Code(err) == codes.Unimplemented {
			return nil, fmt.Errorf("%s does not speak CRI v1: %w", endpoint, err)
		}
		return nil, fmt.Errorf("%s: %w", endpoint, err)
	}
	c.RuntimeName, c.RuntimeVersion = v.RuntimeName, v.RuntimeVersion
	return c, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// ListImages returns every image the runtime holds.
func (c *Client) ListImages(ctx context.Context) ([]*runtimeapi.Image, error) {
	resp, err := c.images.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return resp.Images, nil
}

// ImageStatus asks the runtime for ref exactly as the kubelet does before it
// decides to pull; nil means the image is absent.
func (c *Client) ImageStatus(ctx context.Context, ref string) (*runtimeapi.Image, error) {
	resp, err := c.images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		return nil, fmt.Errorf("image status %s: %w", ref, err)
	}
	return resp.Image, nil
}

// PullImage pulls ref with auth (nil for anonymous) and returns the image
// reference the runtime recorded.
func (c *Client) PullImage(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error) {
	resp, err := c.images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}, Auth: auth})
	if err != nil {
		// Never wrap the request: its auth would end up in the message.
		return "", fmt.Errorf("pull %s: %w", ref, err)
	}
	return resp.ImageRef, nil
}

// RemoveImage removes ref, as the kubelet's image GC does.
func (c *Client) RemoveImage(ctx context.Context, ref string) error {
	if _, err := c.images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		return fmt.Errorf("remove image %s: %w", ref, err)
	}
	return nil
}

// ListContainers returns every container the runtime has, in any state:
// what the kubelet's image GC counts as using an image.
func (c *Client) ListContainers(ctx context.Context) ([]*runtimeapi.Container, error) {
	resp, err := c.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	return resp.Containers, nil
}

// ContainerMounts returns the mounts the runtime reports for container
// id, image volumes among them; nil, without error, for a container
// removed since it was listed.
func (c *Client) ContainerMounts(ctx context.Context, id string) ([]*runtimeapi.Mount, error) {
	resp, err := c.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if status.Code(err) == codes.NotFound {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("container status %s: %w", id, err)
	}
	return resp.GetStatus().GetMounts(), nil
}

// StatusInfo returns the runtime's verbose status info.
func (c *Client) StatusInfo(ctx context.Context) (map[string]string, error) {
	resp, err := c.runtime.Status(ctx, &runtimeapi.StatusRequest{Verbose: true})
	if err != nil {
		return nil, fmt.Errorf("runtime status: %w", err)
	}
	return resp.Info, nil
}

// ImageFilesystems returns the mountpoints of the runtime's image
// filesystems.
func (c *Client) ImageFilesystems(ctx context.Context) ([]string, error) {
	resp, err := c.images.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil {
		return nil, fmt.Errorf("image filesystem info: %w", err)
	}
	var mounts []string
	for _, fs := range resp.ImageFilesystems {
		mounts = append(mounts, fs.GetFsId().GetMountpoint())
	}
	return mounts, nil
}
