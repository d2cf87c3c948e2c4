package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"

	"github.com/kube-preloader/kube-preloader/preload"
	"github.com/kube-preloader/kube-preloader/warm"
)

func runWarm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("warm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configMap  = fs.String("configmap", "", "the agent's ConfigMap, NAMESPACE/NAME")
		image      = fs.String("image", "", "image to add to the ConfigMap's "+warm.ConfigKey)
		waitFlag   = fs.Bool("wait", false, "wait until every node running the agent reports the image present")
		timeout    = fs.Duration("timeout", 10*time.Minute, "bound for the whole command; with --wait, nodes still without the image then make exit 1 (0: no bound)")
		kubeconfig = fs.String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	)
	if err := fs.Parse(args); err != nil {
		return &exitError{code: exitInvalid, err: errors.New("")}
	}
	if fs.NArg() > 0 {
		return usageError("warm: unexpected arguments %q", fs.Args())
	}
	ns, name, ok := strings.Cut(*configMap, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return usageError("warm: --configmap must be NAMESPACE/NAME, not %q", *configMap)
	}
	if *image == "" {
		return usageError("warm: --image is required")
	}
	img, err := warm.ParseImage(*image)
	if err != nil {
		return usageError("warm: --image %q: %v", *image, err)
	}
	if *timeout < 0 {
		return usageError("warm: --timeout must not be negative")
	}
	cfg, err := loadClusterConfig(*kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}

	edit, err := warm.Add(ctx, cs, ns, name, img)
	if err != nil {
		return addExit(err)
	}
	hash := preload.ConfigHash([]byte(edit.Data))
	if edit.Added {
		fmt.Fprintf(stdout, "added %s to %s/%s %s (config %s)\n", *image, ns, name, warm.ConfigKey, hash)
	} else {
		fmt.Fprintf(stdout, "%s is already in %s/%s %s (config %s)\n", *image, ns, name, warm.ConfigKey, hash)
	}
	if !*waitFlag {
		return nil
	}
	mc, err := metadata.NewForConfig(cfg)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}
	w := &warm.Waiter{Client: cs, Metadata: mc, Namespace: ns, Name: name, Image: img, Edit: edit, Progress: stderr}
	return waitExit(w.Wait(ctx))
}

// addExit gives warm.Add's errors their exit codes: an images.yaml it
// cannot edit is the user's to fix (2), the rest are the API server's.
func addExit(err error) error {
	var ce *warm.ConfigError
	if errors.As(err, &ce) {
		return &exitError{code: exitInvalid, err: err}
	}
	return kubeAPIError(err)
}

// waitExit gives warm.Waiter.Wait's errors their exit codes: Nodes and
// ConfigMap that could not be read mean the API server cannot be used (3);
// otherwise nodes do not have the image (1).
func waitExit(err error) error {
	var ue *warm.UnreachableError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ue):
		return &exitError{code: exitUnreachable, err: err}
	default:
		return &exitError{code: exitMissing, err: err}
	}
}
