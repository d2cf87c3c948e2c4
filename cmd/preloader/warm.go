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
	"github.com/kube-preloader/kube-preloader/workloads"
)

type warmOptions struct {
	kube      kubeFlags
	configMap string
	image     string
	workload  string
	wait      bool
	timeout   time.Duration
}

func newWarmCmd() *cobra.Command {
	var o warmOptions
	cmd := &cobra.Command{
		Use:   "warm --configmap [NAMESPACE/]NAME (--image REF | --workload NAMESPACE/KIND/NAME)",
		Short: "Add an image to the agent's ConfigMap, or show a workload's images on its nodes; optionally wait until nodes have them",
		Long: `Add an image to the agent's ConfigMap (key ` + warm.ConfigKey + `), keeping the rest of it
as it is, and with --wait wait until every node the agent reports on holds
it: a CI pipeline pre-warms the image of a rollout before the rollout.
With --wait, exit 1 when nodes still lack it at --timeout.

With --workload instead, nothing is edited: the workload (kind deployment,
statefulset, daemonset, job or cronjob) must be covered by the config's
workloads section, whose images preloader controller keeps in the
ConfigMap. warm prints, per image of the workload's pod template, which of
the nodes that will run it (by its nodeSelector and required node affinity)
have it, lack it, or have not yet reported the config that lists it; with
--wait it waits until all of them have every image, and exits 1 when some
still lack one at --timeout.`,
		Example: `  # Before rolling out app:1.5, have every node pull it first:
  preloader warm --configmap kube-preloader/preloader-config --image corp.example/app:1.5 --wait --timeout 15m

  # After changing a covered Deployment's image, wait for it on the nodes that will run it:
  preloader warm --configmap kube-preloader/preloader-config --workload shop/deployment/web --wait

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
	f.StringVar(&o.workload, "workload", "", "a workload the config's workloads section covers, NAMESPACE/KIND/NAME (shop/deployment/web): show or wait for its images on the nodes that will run it")
	f.BoolVar(&o.wait, "wait", false, "wait until every node running the agent reports the image present (--workload: every node that will run the workload, each of its images)")
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
	switch {
	case o.image == "" && o.workload == "":
		return usageError("warm: --image is required, or --workload")
	case o.image != "" && o.workload != "":
		return usageError("warm: --image and --workload exclude each other")
	}
	if o.timeout < 0 {
		return usageError("warm: --timeout must not be negative")
	}
	if o.workload != "" {
		return o.runWorkload(ctx, ns, name, stdout, stderr)
	}
	img, err := warm.ParseImage(o.image)
	if err != nil {
		return usageError("warm: --image %q: %v", o.image, err)
	}
	cs, mc, err := o.clients()
	if err != nil {
		return err
	}
	ctx, cancel := o.withTimeout(ctx)
	defer cancel()

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
	w := &warm.Waiter{Client: cs, Metadata: mc, Namespace: ns, Name: name, Image: img, Edit: edit, Progress: stderr}
	return waitExit(w.Wait(ctx))
}

// runWorkload is warm --workload: where the workload's images are, or
// with --wait a wait for them. It edits nothing.
func (o *warmOptions) runWorkload(ctx context.Context, ns, name string, stdout, stderr io.Writer) error {
	ref, err := workloads.ParseRef(o.workload)
	if err != nil {
		return usageError("warm: --workload: %v", err)
	}
	cs, mc, err := o.clients()
	if err != nil {
		return err
	}
	ctx, cancel := o.withTimeout(ctx)
	defer cancel()
	target, err := warm.Resolve(ctx, cs, ns, name, ref)
	if err != nil {
		return resolveExit(err)
	}
	w := &warm.Waiter{Client: cs, Metadata: mc, Namespace: ns, Name: name, Target: &target, Progress: stderr}
	if !o.wait {
		r, err := w.Locate(ctx)
		if err != nil {
			return waitExit(err)
		}
		r.Print(stdout, ns, name)
		return nil
	}
	return waitExit(w.Wait(ctx))
}

// clients are warm's API clients: typed, and of metadata for the Nodes.
func (o *warmOptions) clients() (*kubeapi.Client, metadata.Interface, error) {
	cfg, err := o.kube.restConfig()
	if err != nil {
		return nil, nil, err
	}
	cs, err := kubeapi.NewForConfig(cfg)
	if err != nil {
		return nil, nil, &exitError{code: exitInvalid, err: err}
	}
	mc, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, nil, &exitError{code: exitInvalid, err: err}
	}
	return cs, mc, nil
}

// withTimeout bounds ctx by --timeout, when one is given.
func (o *warmOptions) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if o.timeout > 0 {
		return context.WithTimeout(ctx, o.timeout)
	}
	return ctx, func() {}
}

// resolveExit gives warm.Resolve's errors their exit codes: a workload
// that is not there or not covered, and a config that does not parse, are
// the user's to fix (2), the rest are the API server's.
func resolveExit(err error) error {
	var nc *warm.NotCoveredError
	var ce *warm.ConfigError
	if errors.As(err, &nc) || errors.As(err, &ce) {
		return &exitError{code: exitInvalid, err: err}
	}
	return kubeAPIError(err)
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
