package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/klog/v2"

	"github.com/kube-preloader/kube-preloader/controller"
	"github.com/kube-preloader/kube-preloader/kubeapi"
	"github.com/kube-preloader/kube-preloader/workloads"
)

type controllerOptions struct {
	configMap, kubeconfig, identity string
}

func newControllerCmd() *cobra.Command {
	var o controllerOptions
	cmd := &cobra.Command{
		Use:   "controller --configmap NAMESPACE/NAME",
		Short: "Keep the images of the config's workloads in the agents' ConfigMap (one per cluster)",
		Long: `Keep the images of the workloads that the config's workloads section selects
(Deployments, StatefulSets, DaemonSets, Jobs, CronJobs) in the ConfigMap key
` + workloads.Key + `, for the agents to preload as if listed in ` + controller.ConfigKey + `.
It writes that key only, and only when it changes. Replicas elect a leader
through the Lease ` + controller.LeaseName + ` in the ConfigMap's namespace; the others
stand by. A replica that loses the Lease exits (code 1) to start afresh.`,
		Example: `  # As the chart's Deployment runs it (POD_NAME from the downward API):
  preloader controller --configmap kube-preloader/preloader-config

  # Outside the cluster:
  preloader controller --configmap kube-preloader/preloader-config --kubeconfig ~/.kube/config`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.configMap, "configmap", "", "the agents' ConfigMap, NAMESPACE/NAME: "+controller.ConfigKey+" is read, "+workloads.Key+" written")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: the pod's service account)")
	f.StringVar(&o.identity, "identity", "", "this replica in the leader Lease (default: $POD_NAME, else the host name)")
	return cmd
}

func (o *controllerOptions) run(ctx context.Context, stderr io.Writer) error {
	ns, name, ok := strings.Cut(o.configMap, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return usageError("controller: --configmap must be NAMESPACE/NAME, not %q", o.configMap)
	}
	id := o.identity
	if id == "" {
		id = os.Getenv("POD_NAME")
	}
	if id == "" {
		h, err := os.Hostname()
		if err != nil {
			return usageError("controller: no --identity, $POD_NAME or host name: %v", err)
		}
		id = h
	}
	restConfig, err := longRunningConfig("controller", o.kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubeapi.NewForConfig(restConfig)
	if err != nil {
		return &exitError{code: exitInvalid, err: fmt.Errorf("controller: %w", err)}
	}
	log := newLogger(stderr)
	klog.SetSlogLogger(log)
	err = controller.Run(ctx, controller.Options{Client: client, Namespace: ns, ConfigMap: name, Identity: id, Log: log})
	if errors.Is(err, controller.ErrLostLeadership) {
		return &exitError{code: exitMissing, err: fmt.Errorf("controller: %w", err)}
	}
	return err
}
