package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/preload"
)

// writeResults prints once's results: a table (wide adds the pull path,
// where each image came from, the attempts and the runtime's message), or every field as
// JSON or YAML, with the runtime they are of.
func writeResults(w io.Writer, format string, rt nodestatus.Runtime, results []preload.Result, pruned []preload.Pruned) error {
	switch format {
	case "json", "yaml":
		return writeObject(w, format, struct {
			Runtime nodestatus.Runtime `json:"runtime"`
			Images  []preload.Result   `json:"images"`
			Pruned  []preload.Pruned   `json:"pruned,omitempty"`
		}{rt, results, pruned})
	}
	wide := format == "wide"
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := "IMAGE\tSTATUS\tSIZE\tTIME\tREASON"
	if wide {
		header += "\tVIA\tSOURCE\tATTEMPTS\tERROR"
	}
	fmt.Fprintln(tw, header)
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s", r.Image, r.Status, humanSize(r.Size), humanDuration(r.Duration), reason(r))
		if wide {
			fmt.Fprintf(tw, "\t%s\t%s\t%s\t%s", orDash(r.Via), orDash(r.Source), orDash(attempts(r.Attempts)), orDash(r.Error))
		}
		fmt.Fprintln(tw)
	}
	if len(pruned) > 0 {
		fmt.Fprintln(tw, "\nPRUNED\tACTION\tREASON")
		for _, p := range pruned {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Image, p.Action, p.Reason)
		}
	}
	return tw.Flush()
}

// writeObject prints v as indented JSON, or as YAML of the same fields.
func writeObject(w io.Writer, format string, v any) error {
	if format == "yaml" {
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// reason is the table's REASON: a guessed sandbox image says that it is
// one, and that its failure is not counted.
func reason(r preload.Result) string {
	if !r.Guess {
		return r.Reason.String()
	}
	if r.Present() {
		return "sandbox image guessed (containerd 2.x default, not found in config)"
	}
	return r.Reason.String() + "; sandbox image guessed (containerd 2.x default, not found in config), not counted"
}

func attempts(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprint(n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func humanSize(b uint64) string {
	if b == 0 {
		return "-"
	}
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%dB", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

func humanDuration(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(10 * time.Millisecond).String()
}
