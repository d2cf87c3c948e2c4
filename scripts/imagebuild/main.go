// Command imagebuild builds the preloader container image without a Docker
// daemon and pushes it as one OCI image index with a manifest per platform
// (default linux/amd64 and linux/arm64). It is the image's only recipe
// (there is no Dockerfile): a scratch image with
// /etc/ssl/certs/ca-certificates.crt and the static /preloader, entrypoint
// /preloader. Nothing is fetched: the base is empty. Registries on localhost/127.0.0.1/::1 are spoken to over plain HTTP.
// Credentials come from the Docker config ($DOCKER_CONFIG, ~/.docker).
//
//	go run ./scripts/imagebuild --image REF [--platforms linux/amd64,linux/arm64]
//	    [--version V] [--revision SHA] [--ldflags FLAGS]
//	    [--binary PLATFORM=FILE]... [--ca-certs FILE]
//
// The index is reproducible: every time in it (layer entries, configs, the
// org.opencontainers.image.created annotation) is $SOURCE_DATE_EPOCH
// (default 0; make image sets the commit time), tar entries are in a fixed
// order with uid/gid 0 and fixed modes, and the binaries are built with
// -trimpath, so the same source, version and revision give the same digest.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
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
	"golang.org/x/sync/errgroup"
)

const (
	// defaultPath is the PATH BuildKit records for an image built FROM scratch.
	defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// defaultPackage is an import path rather than ./cmd/preloader so that
	// the build works from any directory of the module (the tests run in
	// scripts/imagebuild).
	defaultPackage   = "github.com/kube-preloader/kube-preloader/cmd/preloader"
	defaultPlatforms = "linux/amd64,linux/arm64"
	sourceURL        = "https://github.com/kube-preloader/kube-preloader"
)

// elfMachine is the ELF e_machine a static Go binary for GOARCH has; it
// also lists the architectures an image can be built for.
var elfMachine = map[string]elf.Machine{
	"amd64":   elf.EM_X86_64,
	"arm64":   elf.EM_AARCH64,
	"arm":     elf.EM_ARM,
	"ppc64le": elf.EM_PPC64,
	"s390x":   elf.EM_S390,
	"riscv64": elf.EM_RISCV,
}

type options struct {
	image     string
	platforms []v1.Platform
	version   string
	revision  string
	ldflags   string
	binaries  binaryFlag
	caCerts   string
	pkg       string
	created   time.Time
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
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	ref, err := parseRef(o.image)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "imagebuild")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bins, err := buildBinaries(ctx, o, dir)
	if err != nil {
		return err
	}
	idx, err := buildIndex(o, bins)
	if err != nil {
		return err
	}
	if err := remote.WriteIndex(ref, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return report(stdout, ref, idx)
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("imagebuild", flag.ContinueOnError)
	o := options{binaries: binaryFlag{}}
	var platforms string
	fs.StringVar(&o.image, "image", "", "reference to push the index to (required)")
	fs.StringVar(&platforms, "platforms", defaultPlatforms, "comma-separated linux/ARCH[/VARIANT] list, one manifest each")
	fs.StringVar(&o.version, "version", "dev", "version stamped into the binary and the image labels")
	fs.StringVar(&o.revision, "revision", "", "source revision for the org.opencontainers.image.revision label")
	fs.StringVar(&o.ldflags, "ldflags", "", `go build -ldflags (default "-s -w -X main.version=VERSION", as make build)`)
	fs.Var(o.binaries, "binary", "PLATFORM=FILE: a prebuilt static binary for PLATFORM instead of go build --package (repeatable)")
	fs.StringVar(&o.caCerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to ship at /etc/ssl/certs/ca-certificates.crt (\"\": none)")
	fs.StringVar(&o.pkg, "package", defaultPackage, "package to build for platforms without --binary")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.image == "" || fs.NArg() > 0 {
		return o, errors.New("usage: imagebuild --image REF [flags]")
	}
	if o.ldflags == "" {
		o.ldflags = "-s -w -X main.version=" + o.version
	}
	var err error
	if o.platforms, err = parsePlatforms(platforms); err != nil {
		return o, err
	}
	if err := o.binaries.check(o.platforms); err != nil {
		return o, err
	}
	o.created, err = sourceDate(os.Getenv("SOURCE_DATE_EPOCH"))
	return o, err
}

// sourceDate follows reproducible-builds.org: unset means the epoch, so
// that a build without it is still reproducible.
func sourceDate(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// parsePlatforms accepts linux platforms only: the binary is a static Linux
// executable. arm without a variant is arm/v7, the common 32-bit target.
func parsePlatforms(s string) ([]v1.Platform, error) {
	var ps []v1.Platform
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := v1.ParsePlatform(f)
		if err != nil {
			return nil, fmt.Errorf("platform %q: %w", f, err)
		}
		if p.OS != "linux" {
			return nil, fmt.Errorf("platform %q: only linux images can be built", f)
		}
		if _, ok := elfMachine[p.Architecture]; !ok {
			return nil, fmt.Errorf("platform %q: unsupported architecture %q", f, p.Architecture)
		}
		if p.Architecture == "arm" && p.Variant == "" {
			p.Variant = "v7"
		}
		if err := checkVariant(*p); err != nil {
			return nil, fmt.Errorf("platform %q: %w", f, err)
		}
		if seen[p.String()] {
			return nil, fmt.Errorf("platform %q given twice", f)
		}
		seen[p.String()] = true
		ps = append(ps, *p)
	}
	if len(ps) == 0 {
		return nil, errors.New("--platforms: none given")
	}
	return ps, nil
}

// checkVariant refuses variants go build cannot target, rather than
// labelling a binary with a variant it was not built for.
func checkVariant(p v1.Platform) error {
	switch {
	case p.Variant == "":
		return nil
	case p.Architecture == "arm" && (p.Variant == "v5" || p.Variant == "v6" || p.Variant == "v7"):
		return nil
	case p.Architecture == "arm64" && p.Variant == "v8":
		return nil
	}
	return fmt.Errorf("variant %q of %s is not supported", p.Variant, p.Architecture)
}

// binaryFlag maps a platform ("linux/arm64") to a prebuilt binary.
type binaryFlag map[string]string

func (b binaryFlag) String() string { return fmt.Sprint(map[string]string(b)) }

func (b binaryFlag) Set(s string) error {
	plat, file, ok := strings.Cut(s, "=")
	if !ok || file == "" {
		return errors.New("want PLATFORM=FILE")
	}
	p, err := v1.ParsePlatform(plat)
	if err != nil {
		return err
	}
	if p.Architecture == "arm" && p.Variant == "" {
		p.Variant = "v7"
	}
	b[p.String()] = file
	return nil
}

func (b binaryFlag) check(ps []v1.Platform) error {
	for k := range b {
		if !containsPlatform(ps, k) {
			return fmt.Errorf("--binary %s: platform not in --platforms", k)
		}
	}
	return nil
}

func containsPlatform(ps []v1.Platform, key string) bool {
	for _, p := range ps {
		if p.String() == key {
			return true
		}
	}
	return false
}

// buildBinaries returns a binary per platform, in the order of
// o.platforms. The go builds run at the same time: each one's link step is
// mostly one core, and a warm build is little else.
func buildBinaries(ctx context.Context, o options, dir string) ([]string, error) {
	bins := make([]string, len(o.platforms))
	g, ctx := errgroup.WithContext(ctx)
	for i, p := range o.platforms {
		if f, ok := o.binaries[p.String()]; ok {
			bins[i] = f
			continue
		}
		bins[i] = filepath.Join(dir, "preloader-"+strings.ReplaceAll(p.String(), "/", "-"))
		g.Go(func() error { return goBuild(ctx, o, p, bins[i]) })
	}
	return bins, g.Wait()
}

// goBuild builds the binary as make build does: static, -trimpath, the same
// -ldflags.
func goBuild(ctx context.Context, o options, p v1.Platform, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", o.ldflags, "-o", out, o.pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture)
	if p.Architecture == "arm" {
		cmd.Env = append(cmd.Env, "GOARM="+strings.TrimPrefix(p.Variant, "v"))
	}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s for %s: %w\n%s", o.pkg, p, err, stderr.Bytes())
	}
	return nil
}

// checkBinary refuses what would not run on p: a file that is not ELF, of
// another machine, or dynamically linked (the image has no libc or loader).
func checkBinary(file string, p v1.Platform) error {
	f, err := elf.Open(file)
	if err != nil {
		return fmt.Errorf("%s is not an ELF binary: %w", file, err)
	}
	defer f.Close()
	if want := elfMachine[p.Architecture]; f.Machine != want {
		return fmt.Errorf("%s: ELF machine %s, want %s for %s", file, f.Machine, want, p)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s: dynamically linked (has PT_INTERP); build with CGO_ENABLED=0", file)
		}
	}
	return nil
}

// buildIndex assembles the index, its manifests in the order of
// o.platforms. The CA layer is the same blob in every manifest.
func buildIndex(o options, bins []string) (v1.ImageIndex, error) {
	certs, err := caLayer(o)
	if err != nil {
		return nil, err
	}
	var adds []mutate.IndexAddendum
	for i, p := range o.platforms {
		img, err := buildImage(o, p, bins[i], certs)
		if err != nil {
			return nil, fmt.Errorf("image for %s: %w", p, err)
		}
		adds = append(adds, mutate.IndexAddendum{Add: plainImage{img}, Descriptor: v1.Descriptor{Platform: &p}})
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	idx = mutate.AppendManifests(idx, adds...)
	return mutate.Annotations(idx, annotations(o)).(v1.ImageIndex), nil
}

// plainImage keeps go-containerregistry from giving the image's index
// descriptor an artifactType (it copies the config's media type there, as
// for an artifact): buildx and the OCI examples give an image none, and
// tools that list artifacts separately would count the platforms as such.
type plainImage struct{ v1.Image }

func (plainImage) ArtifactType() (string, error) { return "", nil }

// caLayer is nil without --ca-certs.
func caLayer(o options) (*mutate.Addendum, error) {
	if o.caCerts == "" {
		return nil, nil
	}
	certs, err := os.ReadFile(o.caCerts)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	l, err := fileLayer("/etc/ssl/certs/ca-certificates.crt", certs, 0o644, o.created)
	if err != nil {
		return nil, fmt.Errorf("CA layer: %w", err)
	}
	return &mutate.Addendum{Layer: l, History: v1.History{
		Created: v1.Time{Time: o.created}, CreatedBy: "COPY /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt"}}, nil
}

// buildImage is the image for p: the CA bundle's layer then the binary's,
// its config, and the OCI annotations on the manifest.
func buildImage(o options, p v1.Platform, bin string, certs *mutate.Addendum) (v1.Image, error) {
	if err := checkBinary(bin, p); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	l, err := fileLayer("/preloader", data, 0o755, o.created)
	if err != nil {
		return nil, fmt.Errorf("binary layer: %w", err)
	}
	var adds []mutate.Addendum
	if certs != nil {
		adds = append(adds, *certs)
	}
	adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{
		Created: v1.Time{Time: o.created}, CreatedBy: "COPY /out/preloader /preloader"}})
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if img, err = mutate.Append(img, adds...); err != nil {
		return nil, err
	}
	if img, err = withConfig(img, o, p); err != nil {
		return nil, err
	}
	return mutate.Annotations(img, annotations(o)).(v1.Image), nil
}

func withConfig(img v1.Image, o options, p v1.Platform) (v1.Image, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: o.created}
	cf.Config.Entrypoint = []string{"/preloader"}
	cf.Config.Env = []string{defaultPath}
	cf.Config.Labels = labels(o)
	cf.History = append(cf.History, v1.History{Created: v1.Time{Time: o.created}, CreatedBy: `ENTRYPOINT ["/preloader"]`, EmptyLayer: true})
	return mutate.ConfigFile(img, cf)
}

// labels are the image config's OCI labels. The project names no license
// yet, so there is no org.opencontainers.image.licenses.
func labels(o options) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "preloader",
		"org.opencontainers.image.description": "kube-preloader node agent: makes container images present on Kubernetes nodes through the CRI",
		"org.opencontainers.image.source":      sourceURL,
		"org.opencontainers.image.version":     o.version,
		"org.opencontainers.image.created":     o.created.Format(time.RFC3339),
		// Set even when empty, so every image has the same keys.
		"org.opencontainers.image.revision": o.revision,
	}
}

// annotations go on the index and on each manifest, where registries and
// clients that never read a config (skopeo inspect --raw, UIs) see them.
// The same keys as the labels, so both say the same.
func annotations(o options) map[string]string {
	return labels(o)
}

func report(w io.Writer, ref name.Reference, idx v1.ImageIndex) error {
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	var plats []string
	for _, desc := range m.Manifests {
		plats = append(plats, desc.Platform.String()+"="+desc.Digest.String())
	}
	_, err = fmt.Fprintf(w, "pushed %s@%s (index: %s)\n", ref.Name(), d, strings.Join(plats, " "))
	return err
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

// fileLayer is a layer holding one root-owned file and its parent
// directories, as COPY makes it. Entries are parents first, uid/gid 0, no
// user or group names, every time mtime: nothing of the build machine.
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
	// Compressed once: the digest and the upload would gzip the ~30 MiB
	// binary twice otherwise.
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
}
