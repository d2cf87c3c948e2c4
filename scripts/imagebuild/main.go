// Command imagebuild builds the preloader container image without a Docker
// daemon and pushes it: the same content the Dockerfile describes (a scratch
// image with /etc/ssl/certs/ca-certificates.crt and the static /preloader,
// entrypoint /preloader), for linux/ARCH. Nothing is fetched: the base is
// empty. Registries on localhost/127.0.0.1/::1 are spoken to over plain HTTP.
// Credentials come from the Docker config ($DOCKER_CONFIG, ~/.docker).
//
//	go run ./scripts/imagebuild --image REF [--arch ARCH] [--version V] [--revision SHA]
//	                            [--binary FILE] [--ca-certs FILE]
//
// The image is reproducible: layer and config times are $SOURCE_DATE_EPOCH
// (default 0), so the same inputs give the same digest.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// defaultPath is the PATH BuildKit records for an image built FROM scratch.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

type options struct {
	image    string
	arch     string
	version  string
	revision string
	binary   string
	caCerts  string
	pkg      string
	created  time.Time
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("imagebuild", flag.ContinueOnError)
	var o options
	defArch := os.Getenv("GOARCH")
	if defArch == "" {
		defArch = runtime.GOARCH
	}
	fs.StringVar(&o.image, "image", "", "reference to push to (required)")
	fs.StringVar(&o.arch, "arch", defArch, "GOARCH of the image (platform linux/ARCH)")
	fs.StringVar(&o.version, "version", "dev", "version stamped into the binary and the image labels")
	fs.StringVar(&o.revision, "revision", "", "source revision for the org.opencontainers.image.revision label")
	fs.StringVar(&o.binary, "binary", "", "a prebuilt static linux/ARCH preloader binary (default: go build --package)")
	fs.StringVar(&o.caCerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to ship at /etc/ssl/certs/ca-certificates.crt (\"\": none)")
	fs.StringVar(&o.pkg, "package", "./cmd/preloader", "package to build when --binary is not given")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.image == "" || fs.NArg() > 0 {
		return errors.New("usage: imagebuild --image REF [flags]")
	}
	epoch := int64(0)
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		var err error
		if epoch, err = strconv.ParseInt(s, 10, 64); err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH: %v", err)
		}
	}
	o.created = time.Unix(epoch, 0).UTC()

	ref, err := parseRef(o.image)
	if err != nil {
		return err
	}
	if o.binary == "" {
		dir, err := os.MkdirTemp("", "imagebuild")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.binary = filepath.Join(dir, "preloader")
		if err := goBuild(ctx, o); err != nil {
			return err
		}
	}
	img, err := buildImage(o)
	if err != nil {
		return err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pushed %s@%s (linux/%s)\n", ref.Name(), d, o.arch)
	return nil
}

// parseRef allows plain HTTP for loopback registries.
func parseRef(s string) (name.Reference, error) {
	ref, err := name.ParseReference(s)
	if err != nil {
		return nil, err
	}
	host := ref.Context().RegistryStr()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	if host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return name.ParseReference(s, name.Insecure)
	}
	return ref, nil
}

// goBuild builds the binary exactly as the Dockerfile's build stage does.
func goBuild(ctx context.Context, o options) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath",
		"-ldflags", "-s -w -X main.version="+o.version, "-o", o.binary, o.pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.arch)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w", o.pkg, err)
	}
	return nil
}

// buildImage assembles the image: the layers of the Dockerfile's final
// stage, in its order, and its config.
func buildImage(o options) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	var adds []mutate.Addendum
	if o.caCerts != "" {
		certs, err := os.ReadFile(o.caCerts)
		if err != nil {
			return nil, err
		}
		l, err := fileLayer("/etc/ssl/certs/ca-certificates.crt", certs, 0o644, o.created)
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{
			Created: v1.Time{Time: o.created}, CreatedBy: "COPY /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt"}})
	}
	bin, err := os.ReadFile(o.binary)
	if err != nil {
		return nil, err
	}
	if !bytes.HasPrefix(bin, []byte("\x7fELF")) {
		return nil, fmt.Errorf("%s is not an ELF binary", o.binary)
	}
	l, err := fileLayer("/preloader", bin, 0o755, o.created)
	if err != nil {
		return nil, err
	}
	adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{
		Created: v1.Time{Time: o.created}, CreatedBy: "COPY /out/preloader /preloader"}})
	img, err = mutate.Append(img, adds...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", o.arch
	if o.arch == "arm" {
		cf.Variant = "v7"
	}
	cf.Created = v1.Time{Time: o.created}
	cf.Config.Entrypoint = []string{"/preloader"}
	cf.Config.Env = []string{defaultPath}
	cf.Config.Labels = labels(o)
	cf.History = append(cf.History, v1.History{Created: v1.Time{Time: o.created}, CreatedBy: `ENTRYPOINT ["/preloader"]`, EmptyLayer: true})
	return mutate.ConfigFile(img, cf)
}

// labels are the Dockerfile's LABEL lines.
func labels(o options) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       "preloader",
		"org.opencontainers.image.description": "kube-preloader node agent: makes container images present on Kubernetes nodes through the CRI",
		"org.opencontainers.image.source":      "https://github.com/kube-preloader/kube-preloader",
		"org.opencontainers.image.version":     o.version,
		// Set even when empty, as the Dockerfile's LABEL does.
		"org.opencontainers.image.revision": o.revision,
	}
	return l
}

// fileLayer is a layer holding one root-owned file and its parent
// directories, as COPY makes it.
func fileLayer(p string, data []byte, mode int64, mtime time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := strings.TrimPrefix(path.Dir(p), "/")
	if dir != "" {
		var parts []string
		for _, part := range strings.Split(dir, "/") {
			parts = append(parts, part)
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.Join(parts, "/") + "/", Mode: 0o755, ModTime: mtime, Format: tar.FormatPAX}); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(p, "/"), Mode: mode, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}
