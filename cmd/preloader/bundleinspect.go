package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/kube-preloader/kube-preloader/bundle"
)

func newBundleInspectCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Print the lock of a bundle: every image, platform and digest it holds",
		Long: `Print the lock of a bundle: a bundle file (plain, .gz or .zst), the first
part of a split one (FILE.part-001), or a lock file (FILE.lock).`,
		Example: `  preloader bundle inspect images.tar.zst
  preloader bundle inspect images.tar.zst.part-001 -o yaml`,
		Args: cobra.ExactArgs(1),
	}
	out := addOutputFlag(cmd, "output format: table, yaml (the lock as written) or json", "table", "yaml", "json")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		lock, err := bundle.ReadLock(args[0])
		if err != nil {
			return &exitError{code: exitInvalid, err: fmt.Errorf("bundle inspect: %w", err)}
		}
		return writeLock(cmd.OutOrStdout(), out.value, lock)
	}
	return cmd
}

// writeLock prints a lock: a row per image and platform, or the lock
// itself as YAML or JSON.
func writeLock(w io.Writer, format string, l *bundle.Lock) error {
	switch format {
	case "yaml":
		data, err := l.Marshal()
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	case "json":
		return writeObject(w, format, l)
	}
	fmt.Fprintf(w, "platforms: %s\n", strings.Join(l.Platforms, ", "))
	if l.Runtime != nil {
		fmt.Fprintf(w, "read from a node's runtime: %s %s\n", l.Runtime.Name, l.Runtime.Version)
	}
	if l.Since != nil {
		fmt.Fprintf(w, "delta since: %s (%s): layers of its images are left out\n", l.Since.File, l.Since.Digest)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tDIGEST\tPLATFORM\tMANIFEST\tLAYERS\tSIZE\tFROM")
	for _, img := range l.Images {
		for _, p := range img.Platforms {
			size := p.Manifest.Size + p.Config.Size
			for _, b := range p.Layers {
				size += b.Size
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", img.Name, short(img.Digest), p.Platform, short(p.Manifest.Digest), len(p.Layers), humanSize(uint64(size)), img.From)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return writeSignatures(w, l)
}

// writeSignatures lists the cosign tags a bundle carries, if it checked
// signatures.
func writeSignatures(w io.Writer, l *bundle.Lock) error {
	var rows []string
	for _, img := range l.Images {
		var tags []string
		for _, t := range img.Signatures {
			tags = append(tags, t.Tag[strings.LastIndex(t.Tag, "."):]+" "+short(t.Digest))
		}
		if len(tags) > 0 {
			rows = append(rows, img.Name+"\t"+strings.Join(tags, ", "))
		}
	}
	if len(rows) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nsignatures verified at bundle time (--verify-key), carried beside the images:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tCOSIGN TAGS")
	for _, r := range rows {
		fmt.Fprintln(tw, r)
	}
	return tw.Flush()
}

// short is a digest as tables show it: algorithm and 12 hex digits.
func short(d digest.Digest) string {
	if err := d.Validate(); err != nil || len(d.Encoded()) < 12 {
		return d.String()
	}
	return d.Algorithm().String() + ":" + d.Encoded()[:12]
}
