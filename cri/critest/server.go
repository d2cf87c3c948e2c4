// Package critest runs an in-process CRI v1 server on a unix socket for unit
// tests: a runtime whose image store and pull behaviour a test controls.
// Claims about real runtimes are tested against containerd in integration/.
package critest

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Server is a fake runtime. Pull decides the outcome of each PullImage; by
// default every pull succeeds and stores the image.
type Server struct {
	runtimeapi.UnimplementedImageServiceServer
	runtimeapi.UnimplementedRuntimeServiceServer

	Endpoint string
	// Pull is called for each PullImage; a nil error stores the image.
	Pull func(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) error
	// Info is returned by verbose Status.
	Info map[string]string
	// Name and RuntimeVersion are what Version reports; "critest" and "1.0"
	// by default.
	Name, RuntimeVersion string

	mu         sync.Mutex
	images     map[string]*runtimeapi.Image
	containers []*runtimeapi.Container
	calls      map[string]int
}

// Start serves a fake runtime until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	dir, err := os.MkdirTemp("", "critest")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "cri.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Endpoint: "unix://" + sock, images: map[string]*runtimeapi.Image{}, calls: map[string]int{}}
	g := grpc.NewServer()
	runtimeapi.RegisterImageServiceServer(g, s)
	runtimeapi.RegisterRuntimeServiceServer(g, s)
	go g.Serve(lis)
	t.Cleanup(func() {
		g.Stop()
		os.RemoveAll(dir)
	})
	return s
}

// Add stores an image as if it had been pulled.
func (s *Server) Add(ref string, size uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.images[ref] = &runtimeapi.Image{Id: "sha256:" + ref, RepoTags: []string{ref}, Size: size}
}

// AddImage stores img under each of its tags, as an import through
// containerd's API would leave it.
func (s *Server) AddImage(img *runtimeapi.Image) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range img.RepoTags {
		s.images[t] = img
	}
}

// Remove deletes an image behind the preloader's back, as image GC does:
// by a name, or by its ID with all its names.
func (s *Server) Remove(ref string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.images, ref)
	for name, img := range s.images {
		if img.Id == ref {
			delete(s.images, name)
		}
	}
}

// SetPinned sets the pinned field of the image named ref, under all its
// names, as containerd 2.x's CRI reports its pin label. The image is
// replaced, not changed, so that a response being sent keeps what it had.
func (s *Server) SetPinned(ref string, pinned bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.images[ref]
	if old == nil {
		return
	}
	img := proto.Clone(old).(*runtimeapi.Image)
	img.Pinned = pinned
	for name, i := range s.images {
		if i == old {
			s.images[name] = img
		}
	}
}

// RunContainer adds a container of image (a name or an ID) to what
// ListContainers reports.
func (s *Server) RunContainer(name, image string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.containers = append(s.containers, &runtimeapi.Container{Id: name, Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image: &runtimeapi.ImageSpec{Image: image}, ImageRef: image, State: runtimeapi.ContainerState_CONTAINER_RUNNING})
}

func (s *Server) ListContainers(context.Context, *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	s.count("ListContainers")
	s.mu.Lock()
	defer s.mu.Unlock()
	return &runtimeapi.ListContainersResponse{Containers: s.containers}, nil
}

// Calls returns how often the named CRI method was called.
func (s *Server) Calls(method string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[method]
}

func (s *Server) count(method string) {
	s.mu.Lock()
	s.calls[method]++
	s.mu.Unlock()
}

func (s *Server) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	s.count("Version")
	name := s.Name
	if name == "" {
		name = "critest"
	}
	version := s.RuntimeVersion
	if version == "" {
		version = "1.0"
	}
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: name, RuntimeVersion: version, RuntimeApiVersion: "v1"}, nil
}

func (s *Server) Status(context.Context, *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	s.count("Status")
	return &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{}, Info: s.Info}, nil
}

func (s *Server) ListImages(context.Context, *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	s.count("ListImages")
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &runtimeapi.ListImagesResponse{}
	for _, img := range s.images {
		resp.Images = append(resp.Images, img)
	}
	return resp, nil
}

func (s *Server) ImageStatus(_ context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	s.count("ImageStatus")
	s.mu.Lock()
	defer s.mu.Unlock()
	return &runtimeapi.ImageStatusResponse{Image: s.images[req.GetImage().GetImage()]}, nil
}

func (s *Server) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	s.count("PullImage")
	ref := req.GetImage().GetImage()
	if s.Pull != nil {
		if err := s.Pull(ctx, ref, req.GetAuth()); err != nil {
			return nil, err
		}
	}
	s.Add(ref, 1<<20)
	return &runtimeapi.PullImageResponse{ImageRef: "sha256:" + ref}, nil
}

func (s *Server) RemoveImage(_ context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	s.count("RemoveImage")
	s.Remove(req.GetImage().GetImage())
	return &runtimeapi.RemoveImageResponse{}, nil
}

// Errorf returns the gRPC error a runtime returns for a failed pull.
func Errorf(format string, args ...any) error {
	return status.Errorf(codes.Unknown, format, args...)
}
