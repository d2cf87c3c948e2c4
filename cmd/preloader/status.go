package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kube-preloader/kube-preloader/nodestatus"
)

var nodesResource = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}

// kubeRequestTimeout bounds each API request of status and warm, so that a
// black-holed API server ends in exit 3 rather than a hang.
const kubeRequestTimeout = 30 * time.Second

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		kubeconfig = fs.String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
		output     = fs.String("o", "table", "output format: table, wide or json")
	)
	if err := fs.Parse(args); err != nil {
		return &exitError{code: exitInvalid, err: errors.New("")}
	}
	switch *output {
	case "table", "wide", "json":
	default:
		return usageError("status: -o must be table, wide or json, not %q", *output)
	}
	if fs.NArg() > 0 {
		return usageError("status: unexpected arguments %q", fs.Args())
	}
	cfg, err := loadClusterConfig(*kubeconfig)
	if err != nil {
		return err
	}
	mc, err := metadata.NewForConfig(cfg)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}
	views, err := listNodeStatus(ctx, mc)
	if err != nil {
		return err
	}
	if err := writeNodeStatus(stdout, *output, views, time.Now()); err != nil {
		return err
	}
	return nodeStatusVerdict(views)
}

// nodeRow is one Node as status shows it.
type nodeRow struct {
	Name string `json:"name"`
	// Ready is the preloader.io/ready label, or, without it, what the
	// status annotation says; "unknown" for a node without the annotation
	// (no agent reports there) and "invalid" for an annotation that does
	// not decode.
	Ready  string             `json:"ready"`
	Status *nodestatus.Status `json:"status,omitempty"`
	Error  string             `json:"error,omitempty"`
}

const (
	readyUnknown = "unknown"
	readyInvalid = "invalid"
)

// reporting says whether an agent reports on this node.
func (v nodeRow) reporting() bool { return v.Status != nil || v.Error != "" }

// listNodeStatus reads every Node's label and annotation with one
// metadata-only List: no specs or statuses, so it stays small with
// thousands of nodes.
func listNodeStatus(ctx context.Context, mc metadata.Interface) ([]nodeRow, error) {
	ctx, cancel := context.WithTimeout(ctx, kubeRequestTimeout)
	defer cancel()
	list, err := mc.Resource(nodesResource).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, kubeAPIError("list nodes", err)
	}
	views := make([]nodeRow, 0, len(list.Items))
	for i := range list.Items {
		views = append(views, decodeNodeStatus(&list.Items[i].ObjectMeta))
	}
	sort.Slice(views, func(i, j int) bool { return views[i].Name < views[j].Name })
	return views, nil
}

func decodeNodeStatus(m *metav1.ObjectMeta) nodeRow {
	v := nodeRow{Name: m.Name, Ready: readyUnknown}
	raw, ok := m.Annotations[nodestatus.AnnotationStatus]
	if ok {
		st, err := nodestatus.Decode(raw)
		if err != nil {
			v.Error = err.Error()
			v.Ready = readyInvalid
		} else {
			v.Status = &st
			v.Ready = fmt.Sprint(st.Ready())
		}
	}
	if l, ok := m.Labels[nodestatus.LabelReady]; ok && v.Error == "" {
		v.Ready = l
	}
	return v
}

func writeNodeStatus(w io.Writer, format string, views []nodeRow, now time.Time) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Nodes []nodeRow `json:"nodes"`
		}{views})
	}
	wide := format == "wide"
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if wide {
		fmt.Fprintln(tw, "NODE\tREADY\tPRESENT\tMISSING\tUPDATED\tCONFIG\tPOLICY\tREFUSED\tFAILED")
	} else {
		fmt.Fprintln(tw, "NODE\tREADY\tPRESENT\tMISSING\tUPDATED")
	}
	for _, v := range views {
		present, missing, updated, config, policy, refused, failed := "-", "-", "-", "-", "-", "-", "-"
		if st := v.Status; st != nil {
			present = fmt.Sprintf("%d/%d", st.Present, st.Total)
			missing = missingList(st, wide)
			if !st.Changed.IsZero() {
				updated = duration.HumanDuration(now.Sub(st.Changed))
			}
			config = st.ConfigHash
			failed = failedList(st)
			policy, refused = policyOf(st), refusedList(st)
		} else if v.Error != "" {
			failed = v.Error
		}
		if wide {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.Ready, present, missing, updated, config, policy, refused, failed)
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.Name, v.Ready, present, missing, updated)
		}
	}
	return tw.Flush()
}

// notPresent is every image the status names as not present: missing ones
// and failed ones, each once, in that order.
func notPresent(st *nodestatus.Status) []string {
	seen := make(map[string]bool, len(st.Missing)+len(st.Failed))
	var out []string
	for _, m := range st.Missing {
		if !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	for _, f := range st.Failed {
		if !seen[f.Image] {
			seen[f.Image] = true
			out = append(out, f.Image)
		}
	}
	return out
}

// missingList names the images not present; the table shows two and a
// count of the rest, wide shows all.
func missingList(st *nodestatus.Status, all bool) string {
	names := notPresent(st)
	if len(names) == 0 {
		return "<none>"
	}
	const short = 2
	if all || len(names) <= short {
		return strings.Join(names, ",")
	}
	return fmt.Sprintf("%s,+%d more", strings.Join(names[:short], ","), len(names)-short)
}

func failedList(st *nodestatus.Status) string {
	if len(st.Failed) == 0 {
		return "<none>"
	}
	parts := make([]string, len(st.Failed))
	for i, f := range st.Failed {
		parts[i] = f.Image + ": " + f.Reason
	}
	return strings.Join(parts, "; ")
}

func policyOf(st *nodestatus.Status) string {
	if st.Policy == "" {
		return "-"
	}
	return st.Policy
}

// refusedList names the images the kubelet refuses to pods without
// credentials, and how many more the status did not name.
func refusedList(st *nodestatus.Status) string {
	if st.Refused == 0 {
		return "<none>"
	}
	s := strings.Join(st.RefusedImages, ",")
	if more := st.Refused - len(st.RefusedImages); more > 0 {
		s += fmt.Sprintf(",+%d more", more)
	}
	return s
}

// nodeStatusVerdict is status's exit: 0 when every node the agent reports on
// is ready, 1 when one is not (or no node reports at all).
func nodeStatusVerdict(views []nodeRow) error {
	var notReady []string
	reporting := 0
	for _, v := range views {
		if !v.reporting() {
			continue
		}
		reporting++
		if v.Ready != "true" {
			name := v.Name
			if st := v.Status; st != nil && st.Refused > 0 {
				name += fmt.Sprintf(" (kubelet policy %s refuses %d images to pods without credentials)", st.Policy, st.Refused)
			}
			notReady = append(notReady, name)
		}
	}
	if reporting == 0 {
		return &exitError{code: exitMissing, err: fmt.Errorf("no node has a %s annotation (is the agent running?)", nodestatus.AnnotationStatus)}
	}
	if len(notReady) > 0 {
		return &exitError{code: exitMissing, err: fmt.Errorf("%d of %d nodes not ready: %s", len(notReady), reporting, nameList(notReady, 10))}
	}
	return nil
}

// nameList joins names, the first max of them and a count of the rest.
func nameList(names []string, max int) string {
	if len(names) <= max {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:max], ", "), len(names)-max)
}

// loadClusterConfig reads --kubeconfig, else $KUBECONFIG, else
// ~/.kube/config, else the in-cluster service account. A config that
// cannot be loaded is a usage error (exit 2).
func loadClusterConfig(kubeconfig string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, &exitError{code: exitInvalid, err: fmt.Errorf("kubeconfig: %w", err)}
	}
	// No cfg.Timeout: it would also cut warm's watches. Each request is
	// bounded by its context (kubeRequestTimeout) instead.
	cfg.UserAgent = "preloader/" + version
	return cfg, nil
}

// kubeAPIError gives an API error its exit code: a missing or invalid object
// is the user's input (2); everything else, from connection refused and TLS
// failures to 401/403 and 5xx, means the API server cannot be used (3).
func kubeAPIError(what string, err error) error {
	code := exitUnreachable
	if apierrors.IsNotFound(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) {
		code = exitInvalid
	}
	return &exitError{code: code, err: fmt.Errorf("%s: %w", what, err)}
}
