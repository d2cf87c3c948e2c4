package kubelet

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	"sigs.k8s.io/yaml"
)

// DefaultConfigFile is where kubeadm writes the kubelet's --config.
const DefaultConfigFile = "/var/lib/kubelet/config.yaml"

// maxConfigSize bounds what is read of one file: kubelet configurations
// are a few KiB.
const maxConfigSize = 1 << 20

// settings are the fields of a KubeletConfiguration this package reads.
type settings struct {
	Policy       string          `json:"imagePullCredentialsVerificationPolicy"`
	Allowlist    []string        `json:"preloadedImagesVerificationAllowlist"`
	FeatureGates map[string]bool `json:"featureGates"`
}

// ReadPolicy reads the kubelet's configuration as the kubelet does: file
// (its --config), then every *.conf below dir (its --config-dir; "" for
// none) in lexical order, each merged over the one before as a JSON merge
// patch (a list in a drop-in replaces the earlier list). minor is the
// kubelet's minor release (see Minor): the policy's default and the
// allowlist's matching depend on it. A file that cannot be read or parsed
// gives an Unknown policy whose Reason says why: a policy guessed wrong
// would be worse than none.
func ReadPolicy(file, dir string, minor int) Policy {
	merged, source, err := readMerged(file, dir)
	if err != nil {
		return Policy{Name: Unknown, Minor: minor, Reason: err.Error()}
	}
	var s settings
	if err := json.Unmarshal(merged, &s); err != nil {
		return Policy{Name: Unknown, Minor: minor, Reason: fmt.Sprintf("%s: %v", source, err)}
	}
	return s.policy(minor, source)
}

func (s settings) policy(minor int, source string) Policy {
	p := Policy{Name: s.Policy, Allowlist: s.Allowlist, Minor: minor, Reason: source}
	gate, set := s.FeatureGates[FeatureGate]
	if !set {
		// Beta and on by default since 1.35; alpha and off before.
		gate = minor == 0 || minor >= 35
	}
	switch {
	case !gate:
		p.Name, p.Allowlist = NeverVerify, nil
		p.Reason = source + " (feature gate " + FeatureGate + " off)"
	case p.Name == "":
		p.Name = NeverVerifyPreloadedImages
		p.Reason = source + " (the default)"
	case !slices.Contains([]string{NeverVerify, NeverVerifyPreloadedImages, NeverVerifyAllowlistedImages, AlwaysVerify}, p.Name):
		return Policy{Name: Unknown, Minor: minor, Reason: fmt.Sprintf("%s: imagePullCredentialsVerificationPolicy %q is not one the kubelet knows", source, p.Name)}
	}
	return p
}

// readMerged returns the merged configuration as JSON and a description of
// the files it came from.
// Thresholds are the kubelet's image garbage collection and imagefs
// eviction thresholds, as its config sets them; zero values were not set.
type Thresholds struct {
	ImageGCHighThresholdPercent int
	ImagefsAvailable            string // evictionHard imagefs.available: "15%" or a quantity
	Source                      string
}

// ReadThresholds reads the thresholds from the kubelet's config file and
// its drop-in directory, merged as the kubelet merges them.
func ReadThresholds(file, dir string) (Thresholds, error) {
	merged, source, err := readMerged(file, dir)
	if err != nil {
		return Thresholds{}, err
	}
	var s struct {
		ImageGCHighThresholdPercent *int              `json:"imageGCHighThresholdPercent"`
		EvictionHard                map[string]string `json:"evictionHard"`
	}
	if err := json.Unmarshal(merged, &s); err != nil {
		return Thresholds{}, fmt.Errorf("%s: %v", source, err)
	}
	t := Thresholds{ImagefsAvailable: s.EvictionHard["imagefs.available"], Source: source}
	if s.ImageGCHighThresholdPercent != nil {
		t.ImageGCHighThresholdPercent = *s.ImageGCHighThresholdPercent
	}
	return t, nil
}

func readMerged(file, dir string) ([]byte, string, error) {
	merged, err := readJSON(file)
	if err != nil {
		return nil, "", err
	}
	if string(merged) == "null" || len(merged) == 0 {
		return nil, "", fmt.Errorf("kubelet config %s is empty", file)
	}
	sources := []string{file}
	dropIns, err := dropInFiles(dir)
	if err != nil {
		return nil, "", err
	}
	for _, f := range dropIns {
		patch, err := readJSON(f)
		if err != nil {
			return nil, "", err
		}
		if merged, err = jsonpatch.MergePatch(merged, patch); err != nil {
			return nil, "", fmt.Errorf("kubelet config drop-in %s: %w", f, err)
		}
		sources = append(sources, filepath.Base(f))
	}
	return merged, strings.Join(sources, "+"), nil
}

// dropInFiles lists the *.conf files below dir in the order the kubelet
// merges them; a dir that does not exist has none.
func dropInFiles(dir string) ([]string, error) {
	if dir == "" {
		return nil, nil
	}
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == dir && os.IsNotExist(err) {
				return filepath.SkipDir
			}
			return err
		}
		if !d.IsDir() && strings.HasSuffix(d.Name(), ".conf") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kubelet config dir %s: %w", dir, err)
	}
	return files, nil // WalkDir walks in lexical order
}

func readJSON(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kubelet config: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("kubelet config %s: %w", path, err)
	}
	if len(b) > maxConfigSize {
		return nil, fmt.Errorf("kubelet config %s: larger than %d bytes", path, maxConfigSize)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("kubelet config %s: %w", path, err)
	}
	return j, nil
}
