package bundle

import (
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/platforms"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Platforms are the platforms a bundle holds of each image: every one the
// image has (All), or the listed ones.
type Platforms struct {
	All  bool
	List []ocispec.Platform
}

// AllPlatforms is what --platform all asks for.
const AllPlatforms = "all"

// ParsePlatforms reads a comma-separated list of os/arch[/variant], or
// "all". Each platform must name a known operating system and
// architecture: a typo fails here rather than as an image without it.
func ParsePlatforms(s string) (Platforms, error) {
	if strings.TrimSpace(s) == AllPlatforms {
		return Platforms{All: true}, nil
	}
	var ps Platforms
	for i, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		switch {
		case item == "":
			return Platforms{}, fmt.Errorf("%q: item %d is empty; want os/arch[/variant] separated by commas, or all", s, i+1)
		case item == AllPlatforms:
			return Platforms{}, fmt.Errorf("%q: all cannot be combined with other platforms", s)
		}
		p, err := parsePlatform(item)
		if err != nil {
			return Platforms{}, err
		}
		if !slices.ContainsFunc(ps.List, func(q ocispec.Platform) bool { return platforms.Format(q) == platforms.Format(p) }) {
			ps.List = append(ps.List, p)
		}
	}
	return ps, nil
}

func parsePlatform(s string) (ocispec.Platform, error) {
	if n := strings.Count(s, "/"); n < 1 || n > 2 {
		return ocispec.Platform{}, fmt.Errorf("platform %q: want os/arch[/variant], e.g. linux/amd64 or linux/arm/v7", s)
	}
	p, err := platforms.Parse(s)
	if err != nil {
		return ocispec.Platform{}, fmt.Errorf("platform %q: %w", s, err)
	}
	p = platforms.Normalize(p)
	if !slices.Contains(knownOS, p.OS) {
		return ocispec.Platform{}, fmt.Errorf("platform %q: unknown operating system %q (known: %s)", s, p.OS, strings.Join(knownOS, ", "))
	}
	if !slices.Contains(knownArch, p.Architecture) {
		return ocispec.Platform{}, fmt.Errorf("platform %q: unknown architecture %q (known: %s)", s, p.Architecture, strings.Join(knownArch, ", "))
	}
	return p, nil
}

// The operating systems and architectures images are built for (Go's
// GOOS and GOARCH values, as the OCI image spec uses them).
var (
	knownOS   = []string{"aix", "android", "darwin", "dragonfly", "freebsd", "illumos", "ios", "js", "linux", "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows", "zos"}
	knownArch = []string{"386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64", "ppc64le", "riscv64", "s390x", "wasm"}
)

func (ps Platforms) String() string {
	if ps.All {
		return AllPlatforms
	}
	names := make([]string, len(ps.List))
	for i, p := range ps.List {
		names[i] = platforms.Format(p)
	}
	return strings.Join(names, ",")
}
