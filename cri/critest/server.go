// Package critest runs an in-process CRI v1 server on a unix socket for unit
// tests: a runtime whose image store and pull behaviour a test controls,
// and (Containerd) the containerd operations behind it. It keeps image
// records as containerd does, so that noderuntime/storetest, the suite
// real runtimes pass in integration/, passes on it too.
package critest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/containerd"
)

// Server is a fake runtime. Pull decides the outcome of each PullImage; by
// default every pull succeeds and stores the image.
//
// Images are kept as containerd's CRI plugin keeps them: an image (its ID,
// the config digest) is present while a record names it, and a pull
// records the reference, its repository at the manifest digest and the ID.
// ImageStatus finds an image by any of them, by the normalized form of a
// short name, and by repo:tag@digest; ListImages reports each image once,
// with all its names; an image is pinned while any of its records carries
// containerd's pin label.
type Server struct {
	runtimeapi.UnimplementedImageServiceServer
	runtimeapi.UnimplementedRuntimeServiceServer

	Endpoint string
	// Pull is called for each PullImage; a nil error lets the pull go on
	// to the registry (Publish).
	Pull func(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) error
	// Info is returned by verbose Status.
	Info map[string]string
	// Name and RuntimeVersion are what Version reports; "critest" and "1.0"
	// by default.
	Name, RuntimeVersion string

	mu         sync.Mutex
	records    map[string]*record // by name: reference, repo@digest or ID
	sizes      map[string]uint64  // by image ID
	remote     map[string]Remote  // published, by tag reference and repo@digest
	containers []*runtimeapi.Container
	mounts     map[string][]*runtimeapi.Mount // by container ID
	calls      map[string]int
}

// record is an image record: a name pointing to an image, with labels.
type record struct {
	id, digest string
	labels     map[string]string
}

// Remote is an image the fake registry serves.
type Remote struct {
	Ref    string // the tag reference it was published under
	Digest string // manifest digest
	ID     string // config digest: the image ID once pulled
	Size   uint64
	// Auth is what a pull needs; nil: anyone may pull.
	Auth *runtimeapi.AuthConfig
}

// DigestRef is the image's repo@digest reference.
func (r Remote) DigestRef() string {
	named, _ := reference.ParseDockerRef(r.Ref)
	return named.Name() + "@" + r.Digest
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
	s := &Server{Endpoint: "unix://" + sock, records: map[string]*record{}, sizes: map[string]uint64{},
		remote: map[string]Remote{}, mounts: map[string][]*runtimeapi.Mount{}, calls: map[string]int{}}
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

// Publish puts an image into the fake registry under the tag reference
// ref, its content named by ref and seed; auth, if not nil, is what a
// pull of it needs. A registry with nothing published serves every
// reference (most unit tests want no more); once anything is published,
// a reference not published is not found.
func (s *Server) Publish(ref, seed string, auth *runtimeapi.AuthConfig) Remote {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		panic(fmt.Sprintf("critest: publish %q: %v", ref, err))
	}
	r := Remote{Ref: named.String(), Digest: digestOf("manifest", named.String(), seed), ID: digestOf("config", named.String(), seed), Size: 1 << 20, Auth: auth}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.remote[r.Ref] = r
	s.remote[r.DigestRef()] = r
	return r
}

func digestOf(parts ...string) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(strings.Join(parts, "\x00"))))
}

// Add stores an image as if it had been pulled, with ID "sha256:"+ref.
func (s *Server) Add(ref string, size uint64) {
	s.AddImage(&runtimeapi.Image{Id: "sha256:" + ref, RepoTags: []string{ref}, Size: size})
}

// AddImage stores img under its ID, each of its tags and digest
// references, as an import through containerd's API would leave it.
func (s *Server) AddImage(img *runtimeapi.Image) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sizes[img.Id] = img.Size
	for _, n := range slices.Concat([]string{img.Id}, img.RepoTags, img.RepoDigests) {
		s.putLocked(n, img.Id, "")
	}
}

// putLocked points the record name at id, keeping its labels, as a pull
// over an existing record does.
func (s *Server) putLocked(name, id, digest string) {
	if r := s.records[name]; r != nil {
		r.id, r.digest = id, digest
		return
	}
	s.records[name] = &record{id: id, digest: digest, labels: map[string]string{}}
}

// Remove deletes the image ref names (a name or its ID) with all its
// names behind the preloader's back, as the kubelet's image GC does.
func (s *Server) Remove(ref string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeImageLocked(ref)
}

func (s *Server) removeImageLocked(ref string) {
	r := s.lookupLocked(ref)
	if r == nil {
		return
	}
	id := r.id
	for name, r := range s.records {
		if r.id == id {
			delete(s.records, name)
		}
	}
	delete(s.sizes, id)
}

// lookupLocked resolves ref as containerd's CRI does: a record of that
// name, else of its normalized form (docker.io/library/…, repo@digest for
// repo:tag@digest).
func (s *Server) lookupLocked(ref string) *record {
	if r := s.records[ref]; r != nil {
		return r
	}
	if named, err := reference.ParseDockerRef(ref); err == nil {
		return s.records[named.String()]
	}
	return nil
}

// imageLocked is the CRI's view of the image id.
func (s *Server) imageLocked(id string) *runtimeapi.Image {
	img := &runtimeapi.Image{Id: id, Size: s.sizes[id]}
	for _, name := range slices.Sorted(maps.Keys(s.records)) {
		r := s.records[name]
		if r.id != id {
			continue
		}
		switch {
		case name == id:
		case strings.Contains(name, "@"):
			img.RepoDigests = append(img.RepoDigests, name)
		default:
			img.RepoTags = append(img.RepoTags, name)
		}
		img.Pinned = img.Pinned || r.labels[containerd.LabelPinned] == "pinned"
	}
	return img
}

// RunContainer adds a container of image (a name or an ID) to what
// ListContainers reports, mounting each of volumes (names or IDs) as an
// image volume, as ContainerStatus reports.
func (s *Server) RunContainer(name, image string, volumes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.containers = append(s.containers, &runtimeapi.Container{Id: name, Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image: &runtimeapi.ImageSpec{Image: image}, ImageRef: image, State: runtimeapi.ContainerState_CONTAINER_RUNNING})
	for i, v := range volumes {
		s.mounts[name] = append(s.mounts[name], &runtimeapi.Mount{ContainerPath: fmt.Sprintf("/volume/%d", i), Image: &runtimeapi.ImageSpec{Image: v}, Readonly: true})
	}
}

func (s *Server) ListContainers(context.Context, *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	s.count("ListContainers")
	s.mu.Lock()
	defer s.mu.Unlock()
	return &runtimeapi.ListContainersResponse{Containers: s.containers}, nil
}

func (s *Server) ContainerStatus(_ context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	s.count("ContainerStatus")
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.containers {
		if c.Id == req.ContainerId {
			return &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: c.Id, Metadata: c.Metadata, State: c.State,
				Image: c.Image, ImageRef: c.ImageRef, Mounts: s.mounts[c.Id]}}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "container %q not found", req.ContainerId)
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
	for _, id := range slices.Sorted(maps.Keys(s.sizes)) {
		resp.Images = append(resp.Images, s.imageLocked(id))
	}
	return resp, nil
}

func (s *Server) ImageStatus(_ context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	s.count("ImageStatus")
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.lookupLocked(req.GetImage().GetImage())
	if r == nil {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	return &runtimeapi.ImageStatusResponse{Image: s.imageLocked(r.id)}, nil
}

func (s *Server) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	s.count("PullImage")
	ref := req.GetImage().GetImage()
	if s.Pull != nil {
		if err := s.Pull(ctx, ref, req.GetAuth()); err != nil {
			return nil, err
		}
	}
	id, err := s.Fetch(ref, req.GetAuth())
	if err != nil {
		// containerd's CRI sends errdefs' kinds as gRPC codes.
		code := codes.Unknown
		if errdefs.IsNotFound(err) {
			code = codes.NotFound
		}
		return nil, status.Errorf(code, "failed to pull and unpack image %q: %v", ref, err)
	}
	return &runtimeapi.PullImageResponse{ImageRef: id}, nil
}

// Fetch is a pull of ref from the fake registry with auth, recorded as
// the CRI records it; it returns the image ID. It fails as containerd's
// resolver does, with the registry's answer in the text and never the
// credentials.
func (s *Server) Fetch(ref string, auth *runtimeapi.AuthConfig) (string, error) {
	r, named, err := s.Resolve(ref, auth)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sizes[r.ID] = r.Size
	if _, ok := named.(reference.Digested); !ok {
		s.putLocked(named.String(), r.ID, r.Digest)
	}
	s.putLocked(named.Name()+"@"+r.Digest, r.ID, r.Digest)
	s.putLocked(r.ID, r.ID, r.Digest)
	return r.ID, nil
}

// Resolve asks the fake registry which image ref names, as a pull would;
// its errors are those of containerd's resolver, not gRPC statuses.
func (s *Server) Resolve(ref string, auth *runtimeapi.AuthConfig) (Remote, reference.Named, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return Remote{}, nil, fmt.Errorf("failed to parse image reference %q: %w", ref, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.remote) == 0 {
		r := Remote{Ref: named.String(), Digest: digestOf("manifest", named.String()), ID: digestOf("config", named.String()), Size: 1 << 20}
		if d, ok := named.(reference.Digested); ok {
			r.Digest, r.ID = d.Digest().String(), digestOf("config", d.Digest().String())
		}
		return r, named, nil
	}
	host := reference.Domain(named)
	r, ok := s.remote[named.String()]
	if !ok {
		return Remote{}, nil, fmt.Errorf("failed to resolve reference %q: %s: %w", named, named, errdefs.ErrNotFound)
	}
	switch {
	case r.Auth == nil:
	case auth == nil:
		return Remote{}, nil, fmt.Errorf("failed to resolve reference %q: pull access denied, repository does not exist or may require authorization: authorization failed: no basic auth credentials", named)
	case auth.Username != r.Auth.Username || auth.Password != r.Auth.Password:
		return Remote{}, nil, fmt.Errorf("failed to resolve reference %q: unexpected status from HEAD request to https://%s/v2/%s/manifests/%s: 401 Unauthorized",
			named, host, reference.Path(named), tagOrDigest(named))
	}
	return r, named, nil
}

func tagOrDigest(named reference.Named) string {
	if d, ok := named.(reference.Digested); ok {
		return d.Digest().String()
	}
	if t, ok := named.(reference.Tagged); ok {
		return t.Tag()
	}
	return "latest"
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
