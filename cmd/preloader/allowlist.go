package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/kube-preloader/kube-preloader/kubelet"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

type allowlistOptions struct {
	config, kubeletVersion string
	output                 *outputFlag
}

func newAllowlistCmd() *cobra.Command {
	var o allowlistOptions
	cmd := &cobra.Command{
		Use:   "allowlist --config FILE",
		Short: "Print the kubelet config that lets pods without credentials use the images",
		Long: `Print the kubelet configuration that lets pods without pull credentials use
the config's images once they are on the node (KEP-2535): the policy
NeverVerifyAllowlistedImages and the allowlist, in the kubelet's format for
its release. Kubelet 1.35 matches the list differently from 1.36 and later.`,
		Example: `  # Fields to merge into /var/lib/kubelet/config.yaml:
  preloader allowlist --config images.yaml

  # A file for the kubelet's --config-dir, for kubelet 1.35 nodes:
  preloader allowlist --config images.yaml -o drop-in --kubelet-version v1.35 > /etc/kubernetes/kubelet.conf.d/50-preloader.conf`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.config, "config", "", "image list (images.yaml)")
	f.StringVar(&o.kubeletVersion, "kubelet-version", "v1.37", "the nodes' kubelet release: 1.35 matches the allowlist differently")
	o.output = addOutputFlag(cmd, "snippet (fields for the kubelet's config file) or drop-in (a file for its --config-dir)", "snippet", "drop-in")
	cmd.MarkFlagFilename("config", "yaml", "yml")
	return cmd
}

// run prints the kubelet configuration that lets pods without
// credentials use the config's images.
func (o *allowlistOptions) run(stdout, stderr io.Writer) error {
	if o.config == "" {
		return usageError("allowlist: --config is required")
	}
	minor := kubelet.Minor(o.kubeletVersion)
	if minor == 0 {
		return usageError("allowlist: --kubelet-version %q is not a Kubernetes 1.x release", o.kubeletVersion)
	}
	cfg, err := config.Load(o.config)
	if err != nil {
		return err
	}
	images := make([]string, 0, len(cfg.Images))
	for _, img := range cfg.Images {
		images = append(images, img.Ref) // as pods write it: the kubelet matches that string
	}
	entries, notes := kubelet.Allowlist(images, minor)
	for _, n := range notes {
		fmt.Fprintf(stderr, "allowlist: %s\n", n)
	}
	if len(entries) == 0 {
		// The policy with an empty list would refuse every preloaded
		// image, where the default lets them through.
		return &exitError{code: exitInvalid, err: fmt.Errorf("allowlist: no image of %s can be allowlisted for kubelet 1.%d; printing nothing, as NeverVerifyAllowlistedImages with an empty list refuses every preloaded image", o.config, minor)}
	}
	if cfg.SandboxImage != config.SandboxNone {
		fmt.Fprintln(stderr, "allowlist: the sandbox image needs no entry: the kubelet does not verify it")
	}
	if o.output.value == "drop-in" {
		fmt.Fprintln(stderr, "allowlist: a drop-in's list replaces the config file's: merge entries you already have")
	}
	b, err := kubelet.Snippet(entries, o.output.value == "drop-in")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "# kube-preloader: pods without credentials may use the images of %s (kubelet 1.%d)\n%s", o.config, minor, b)
	return err
}
