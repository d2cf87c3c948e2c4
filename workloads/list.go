package workloads

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/kube-preloader/kube-preloader/preload/config"
)

// Key is the key of the agents' ConfigMap that `preloader controller`
// owns: the list it derives, beside the images.yaml people write.
const Key = "workloads.yaml"

// Image is one image of the published list.
type Image struct {
	// Image is the reference, normalized as images.yaml entries are.
	Image string `yaml:"image"`
	// Workloads are the workloads that use it (Ref strings), sorted.
	Workloads []string `yaml:"workloads"`
	// NodeSelectorTerms are where it goes, ORed; none: every node.
	NodeSelectorTerms []Term `yaml:"nodeSelectorTerms,omitempty"`
	// PullSecrets are NAMESPACE/NAME of the workloads' pull secrets, for
	// selections with usePullSecrets only.
	PullSecrets []string `yaml:"pullSecrets,omitempty"`
}

// Term is a corev1.NodeSelectorTerm, spelled as in a pod's YAML.
type Term struct {
	MatchExpressions []Requirement `yaml:"matchExpressions,omitempty"`
	MatchFields      []Requirement `yaml:"matchFields,omitempty"`
}

// Requirement is a corev1.NodeSelectorRequirement.
type Requirement struct {
	Key      string   `yaml:"key"`
	Operator string   `yaml:"operator"`
	Values   []string `yaml:"values,omitempty"`
}

// List is the content of the key Key.
type List struct {
	Images []Image `yaml:"images"`
}

// Selected says whether any selection covers w. Jobs that ended, and Jobs
// of a CronJob (whose template the CronJob's covers), are never selected.
func Selected(sel []config.Workload, w Workload) bool {
	return selection(sel, w) != nil
}

func selection(sel []config.Workload, w Workload) *config.Workload {
	if w.Done || w.Owned {
		return nil
	}
	var found *config.Workload
	for i := range sel {
		if sel[i].Covers(w.Ref.Namespace, w.Labels) {
			if sel[i].UsePullSecrets {
				return &sel[i]
			}
			if found == nil {
				found = &sel[i]
			}
		}
	}
	return found
}

// Derive computes the list of the workloads sel covers. serviceAccount
// finds a ServiceAccount, whose imagePullSecrets count as the pod's, as
// the kubelet counts them; it is asked only for selections with
// usePullSecrets, and may be nil.
func Derive(sel []config.Workload, ws []Workload, serviceAccount func(ns, name string) *corev1.ServiceAccount) List {
	type entry struct {
		img      Image
		anywhere bool
		terms    map[string]bool
	}
	byName := map[string]*entry{}
	for _, w := range ws {
		s := selection(sel, w)
		if s == nil {
			continue
		}
		placement := Placement(w)
		var secrets []string
		if s.UsePullSecrets {
			secrets = pullSecrets(w, serviceAccount)
		}
		for _, name := range Images(w) {
			e := byName[name]
			if e == nil {
				e = &entry{img: Image{Image: name}, terms: map[string]bool{}}
				byName[name] = e
			}
			e.img.Workloads = append(e.img.Workloads, w.Ref.String())
			e.img.PullSecrets = append(e.img.PullSecrets, secrets...)
			if placement == nil {
				e.anywhere = true
			}
			for _, t := range placement {
				term := termOf(t)
				if k := term.key(); !e.terms[k] {
					e.terms[k] = true
					e.img.NodeSelectorTerms = append(e.img.NodeSelectorTerms, term)
				}
			}
		}
	}
	var l List
	for _, e := range byName {
		img := e.img
		if e.anywhere {
			img.NodeSelectorTerms = nil
		}
		slices.SortFunc(img.NodeSelectorTerms, func(a, b Term) int { return strings.Compare(a.key(), b.key()) })
		img.Workloads = sortedUnique(img.Workloads)
		img.PullSecrets = sortedUnique(img.PullSecrets)
		l.Images = append(l.Images, img)
	}
	slices.SortFunc(l.Images, func(a, b Image) int { return strings.Compare(a.Image, b.Image) })
	return l
}

func pullSecrets(w Workload, serviceAccount func(ns, name string) *corev1.ServiceAccount) []string {
	ns := w.Ref.Namespace
	var out []string
	for _, s := range w.Template.Spec.ImagePullSecrets {
		out = append(out, ns+"/"+s.Name)
	}
	if serviceAccount == nil {
		return out
	}
	name := w.Template.Spec.ServiceAccountName
	if name == "" {
		name = "default"
	}
	if sa := serviceAccount(ns, name); sa != nil {
		for _, s := range sa.ImagePullSecrets {
			out = append(out, ns+"/"+s.Name)
		}
	}
	return out
}

func sortedUnique(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

func termOf(t corev1.NodeSelectorTerm) Term {
	conv := func(rs []corev1.NodeSelectorRequirement) []Requirement {
		var out []Requirement
		for _, r := range rs {
			out = append(out, Requirement{Key: r.Key, Operator: string(r.Operator), Values: slices.Clone(r.Values)})
		}
		return out
	}
	return Term{MatchExpressions: conv(t.MatchExpressions), MatchFields: conv(t.MatchFields)}
}

// key identifies a term, for deduplication and a stable order.
func (t Term) key() string {
	b, _ := json.Marshal(t)
	return string(b)
}

// NodeSelectorTerm is t as the Kubernetes type.
func (t Term) NodeSelectorTerm() corev1.NodeSelectorTerm {
	conv := func(rs []Requirement) []corev1.NodeSelectorRequirement {
		var out []corev1.NodeSelectorRequirement
		for _, r := range rs {
			out = append(out, corev1.NodeSelectorRequirement{Key: r.Key, Operator: corev1.NodeSelectorOperator(r.Operator), Values: slices.Clone(r.Values)})
		}
		return out
	}
	return corev1.NodeSelectorTerm{MatchExpressions: conv(t.MatchExpressions), MatchFields: conv(t.MatchFields)}
}

const header = `# Written by preloader controller from the workloads images.yaml selects.
# Do not edit: the controller rewrites this key on every workload change.
`

// Encode is the content of the key Key for l: the same bytes for the same
// list, so that the controller writes only what changed.
func Encode(l List) string {
	if l.Images == nil {
		l.Images = []Image{}
	}
	var b bytes.Buffer
	b.WriteString(header)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(l); err != nil {
		panic(fmt.Sprintf("encoding the workloads list: %v", err)) // plain structs of strings
	}
	return b.String()
}

// Decode reads the key Key; file names it in errors, which carry the line.
func Decode(file, data string) (List, error) {
	var l List
	d := yaml.NewDecoder(strings.NewReader(data))
	d.KnownFields(true)
	if err := d.Decode(&l); err != nil && !errors.Is(err, io.EOF) {
		return List{}, fmt.Errorf("%s: %w", file, err)
	}
	var at struct {
		Images []yaml.Node `yaml:"images"`
	}
	_ = yaml.Unmarshal([]byte(data), &at) // decoded above already
	for i, img := range l.Images {
		if _, err := config.NormalizeRef(img.Image); err != nil {
			return List{}, fmt.Errorf("%s:%d: invalid image %q: %w", file, at.Images[i].Line, img.Image, err)
		}
	}
	return l, nil
}
