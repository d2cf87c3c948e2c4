package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/client-go/metadata"

	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// kubeRequestTimeout bounds status's request, so that a black-holed API
// server ends in exit 3 rather than a hang.
const kubeRequestTimeout = 30 * time.Second

type statusOptions struct {
	kube   kubeFlags
	output *outputFlag
}

func newStatusCmd() *cobra.Command {
	var o statusOptions
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show every node's preload status",
		Long: `Show, for every node the agent reports on, whether it holds every image that
applies to it, as the agent last saw it through CRI ImageStatus: the Node's
preloader.io/ready label and preloader.io/status annotation. Exit 0 when every
reporting node is ready, 1 when one is not or none reports.`,
		Example: `  # Which nodes lack which images:
  preloader status

  # With the kubelet's policy, refusals and failures, on another cluster:
  preloader status -o wide --context prod

  # As kubectl's plugin, for a script:
  kubectl preload status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout())
		},
	}
	o.kube.add(cmd, false)
	o.output = addOutputFlag(cmd, "output format: table, wide, json or yaml", "table", "wide", "json", "yaml")
	return cmd
}

func (o *statusOptions) run(ctx context.Context, stdout io.Writer) error {
	cfg, err := o.kube.restConfig()
	if err != nil {
		return err
	}
	mc, err := metadata.NewForConfig(cfg)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}
	lctx, cancel := context.WithTimeout(ctx, kubeRequestTimeout)
	defer cancel()
	nodes, err := nodestatus.List(lctx, mc)
	if err != nil {
		return kubeAPIError(err)
	}
	if err := writeNodeStatus(stdout, o.output.value, nodes, time.Now()); err != nil {
		return err
	}
	return statusExit(nodes)
}

// statusExit is status's exit: 0 when every node the agent reports on is
// ready, 1 when one is not (or no node reports at all).
func statusExit(nodes []nodestatus.Node) error {
	if err := nodestatus.Verdict(nodes); err != nil {
		return &exitError{code: exitMissing, err: err}
	}
	return nil
}

func writeNodeStatus(w io.Writer, format string, nodes []nodestatus.Node, now time.Time) error {
	switch format {
	case "json", "yaml":
		return writeObject(w, format, struct {
			Nodes []nodestatus.Node `json:"nodes"`
		}{nodes})
	}
	wide := format == "wide"
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if wide {
		fmt.Fprintln(tw, "NODE\tREADY\tPRESENT\tMISSING\tPULLING\tUPDATED\tCONFIG\tPOLICY\tREFUSED\tFAILED")
	} else {
		fmt.Fprintln(tw, "NODE\tREADY\tPRESENT\tMISSING\tUPDATED")
	}
	for _, v := range nodes {
		present, missing, pulling, updated, config, policy, refused, failed := "-", "-", "-", "-", "-", "-", "-", "-"
		if st := v.Status; st != nil {
			present = fmt.Sprintf("%d/%d", st.Present, st.Total)
			missing = missingList(st, wide)
			pulling = pullingList(st)
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
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.Ready, present, missing, pulling, updated, config, policy, refused, failed)
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

// pullingList is the pulls in flight as the agent last wrote them: each
// image with its bytes received of its size, where the runtime tells it.
func pullingList(st *nodestatus.Status) string {
	if len(st.Pulling) == 0 {
		return "<none>"
	}
	parts := make([]string, len(st.Pulling))
	for i, p := range st.Pulling {
		parts[i] = p.Image + " " + humanBytes(p.Done)
		if p.Total > 0 {
			parts[i] += "/" + humanBytes(p.Total)
		}
	}
	return strings.Join(parts, "; ")
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

// kubeAPIError gives an API error its exit code: a missing or invalid object
// is the user's input (2); everything else, from connection refused and TLS
// failures to 401/403 and 5xx, means the API server cannot be used (3).
func kubeAPIError(err error) error {
	code := exitUnreachable
	if apierrors.IsNotFound(err) || apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) {
		code = exitInvalid
	}
	return &exitError{code: code, err: err}
}
