package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/metadata"

	"github.com/kube-preloader/kube-preloader/kubeapi"
	"github.com/kube-preloader/kube-preloader/warm"
)

type warmOptions struct {
	kube      kubeFlags
	configMap string
	image     string
	wait      bool
	timeout   time.Duration
}

func newWarmCmd() *cobra.Command {
	var o warmOptions
	cmd := &cobra.Command{
		Use:   "warm --configmap [NAMESPACE/]NAME --image REF",
		Short: "Add an image to the agent's ConfigMap, optionally wait until nodes have it",
		Long: `Add an image to the agent's ConfigMap (key ` + warm.ConfigKey + `), keeping the rest of it
as it is, and with --wait wait until every node the agent reports on holds
it: a CI pipeline pre-warms the image of a rollout before the rollout.
With --wait, exit 1 when nodes still lack it at --timeout.`,
		Example: `  # Before rolling out app:1.5, have every node pull it first:
  preloader warm --configmap kube-preloader/preloader-config --image corp.example/app:1.5 --wait --timeout 15m

  # The same as kubectl's plugin, namespace by flag:
  kubectl preload warm -n kube-preloader --configmap preloader-config --image corp.example/app:1.5 --wait`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.configMap, "configmap", "", "the agent's ConfigMap, NAMESPACE/NAME, or NAME in -n's namespace")
	f.StringVar(&o.image, "image", "", "image to add to the ConfigMap's "+warm.ConfigKey)
	f.BoolVar(&o.wait, "wait", false, "wait until every node running the agent reports the image present")
	f.DurationVar(&o.timeout, "timeout", 10*time.Minute, "bound for the whole command; with --wait, nodes still without the image then make exit 1 (0: no bound)")
	o.kube.add(cmd, true)
	return cmd
}

// configMapName is --configmap: NAMESPACE/NAME, or NAME in the namespace
// of -n or of the kubeconfig's context, as kubectl would choose it.
func (o *warmOptions) configMapName() (ns, name string, err error) {
	ns, name, ok := strings.Cut(o.configMap, "/")
	if !ok {
		ns, name = "", o.configMap
	}
	if name == "" || strings.Contains(name, "/") || (ok && ns == "") {
		return "", "", usageError("warm: --configmap must be NAMESPACE/NAME or NAME, not %q", o.configMap)
	}
	if n := o.kube.overrides.Context.Namespace; ok && n != "" && n != ns {
		return "", "", usageError("warm: --configmap %s is in namespace %s, and -n says %s", o.configMap, ns, n)
	}
	if ns == "" {
		if ns, err = o.kube.namespace(); err != nil {
			return "", "", err
		}
	}
	return ns, name, nil
}

func (o *warmOptions) run(ctx context.Context, stdout, stderr io.Writer) error {
	ns, name, err := o.configMapName()
	if err != nil {
		return err
	}
	if o.image == "" {
		return usageError("warm: --image is required")
	}
	img, err := warm.ParseImage(o.image)
	if err != nil {
		return usageError("warm: --image %q: %v", o.image, err)
	}
	if o.timeout < 0 {
		return usageError("warm: --timeout must not be negative")
	}
	cfg, err := o.kube.restConfig()
	if err != nil {
		return err
	}
	cs, err := kubeapi.NewForConfig(cfg)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}

	edit, err := warm.Add(ctx, cs, ns, name, img)
	if err != nil {
		return addExit(err)
	}
	hash := edit.Hash
	if edit.Added {
		fmt.Fprintf(stdout, "added %s to %s/%s %s (config %s)\n", o.image, ns, name, warm.ConfigKey, hash)
	} else {
		fmt.Fprintf(stdout, "%s is already in %s/%s %s (config %s)\n", o.image, ns, name, warm.ConfigKey, hash)
	}
	if !o.wait {
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
