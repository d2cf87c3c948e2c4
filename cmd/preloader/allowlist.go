package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/kube-preloader/kube-preloader/kubelet"
	"github.com/kube-preloader/kube-preloader/preload"
)

// runAllowlist prints the kubelet configuration that lets pods without
// credentials use the config's images (KEP-2535): the policy
// NeverVerifyAllowlistedImages and the allowlist in the kubelet's format.
func runAllowlist(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("allowlist", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configPath = fs.String("config", "", "image list (images.yaml)")
		output     = fs.String("o", "snippet", "snippet (fields for the kubelet's config file) or drop-in (a file for its --config-dir)")
		kubeletVer = fs.String("kubelet-version", "v1.37", "the nodes' kubelet release: 1.35 matches the allowlist differently")
	)
	if err := fs.Parse(args); err != nil {
		return &exitError{code: exitInvalid, err: errors.New("")}
	}
	if *configPath == "" {
		return usageError("allowlist: --config is required")
	}
	if fs.NArg() > 0 {
		return usageError("allowlist: unexpected arguments %q", fs.Args())
	}
	if *output != "snippet" && *output != "drop-in" {
		return usageError("allowlist: -o must be snippet or drop-in, not %q", *output)
	}
	minor := kubelet.Minor(*kubeletVer)
	if minor == 0 {
		return usageError("allowlist: --kubelet-version %q is not a Kubernetes 1.x release", *kubeletVer)
	}
	cfg, err := preload.Load(*configPath)
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
		return &exitError{code: exitInvalid, err: fmt.Errorf("allowlist: no image of %s can be allowlisted for kubelet 1.%d; printing nothing, as NeverVerifyAllowlistedImages with an empty list refuses every preloaded image", *configPath, minor)}
	}
	if cfg.SandboxImage != preload.SandboxNone {
		fmt.Fprintln(stderr, "allowlist: the sandbox image needs no entry: the kubelet does not verify it")
	}
	if *output == "drop-in" {
		fmt.Fprintln(stderr, "allowlist: a drop-in's list replaces the config file's: merge entries you already have")
	}
	b, err := kubelet.Snippet(entries, *output == "drop-in")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "# kube-preloader: pods without credentials may use the images of %s (kubelet 1.%d)\n%s", *configPath, minor, b)
	return err
}
