package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/kube-preloader/kube-preloader/agent"
	"github.com/kube-preloader/kube-preloader/kubeapi"
	"github.com/kube-preloader/kube-preloader/kubelet"
	"github.com/kube-preloader/kube-preloader/nodestatus"
)

type agentOptions struct {
	configMap, nodeName, kubeconfig, metricsAddr string
	taintKey                                     string
	kubeletConfig, kubeletConfigDir              string
	runtime                                      runtimeFlags
	credProviders                                credProviderFlags
}

func newAgentCmd() *cobra.Command {
	var o agentOptions
	cmd := &cobra.Command{
		Use:   "agent --configmap NAMESPACE/NAME --node-name NAME",
		Short: "Keep this node's images present as a ConfigMap says, and report on the Node",
		Long: `Keep this node's images present as the ConfigMap says, on every change of
it and every resync, and report on the Node: the label preloader.io/ready,
the annotation preloader.io/status, the condition preloader.io/ImagesReady,
Events, the removal of the taint preloader.io/not-ready (or --taint-key's),
and /metrics. It runs in the DaemonSet of
manifests/; a bad ConfigMap keeps the last good config running.`,
		Example: `  # As the DaemonSet runs it (NODE_NAME from the downward API):
  preloader agent --configmap kube-preloader/preloader-config

  # Outside the cluster, for a node you are on:
  preloader agent --configmap kube-preloader/preloader-config --node-name node-1 --kubeconfig ~/.kube/config`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.configMap, "configmap", "", "the agent's ConfigMap, NAMESPACE/NAME (key "+agent.ConfigKey+"); pullSecrets and serviceAccounts are looked up in its namespace")
	f.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default: $NODE_NAME, set from the downward API)")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: the pod's service account)")
	f.StringVar(&o.metricsAddr, "metrics-addr", agent.DefaultMetricsAddr, "address for /metrics, /healthz and /readyz; empty disables them")
	f.StringVar(&o.taintKey, "taint-key", nodestatus.TaintNotReady, "the key of the taint the agent removes from its Node once the node is ready; it never adds one")
	f.StringVar(&o.kubeletConfig, "kubelet-config", kubelet.DefaultConfigFile, "the node kubelet's --config file, read for its credential verification policy; empty: do not read it")
	f.StringVar(&o.kubeletConfigDir, "kubelet-config-dir", "", "the node kubelet's --config-dir (drop-ins), if it has one")
	o.runtime.add(f)
	o.credProviders.add(f)
	return cmd
}

func (o *agentOptions) run(ctx context.Context, stderr io.Writer) error {
	ns, name, ok := strings.Cut(o.configMap, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return usageError("agent: --configmap must be NAMESPACE/NAME, not %q", o.configMap)
	}
	if o.nodeName == "" {
		return usageError("agent: --node-name (or $NODE_NAME) is required")
	}
	if err := nodestatus.CheckTaintKey(o.taintKey); err != nil {
		return usageError("agent: --taint-key: %v", err)
	}
	plugins, err := o.credProviders.load()
	if err != nil {
		return err
	}

	restConfig, err := longRunningConfig("agent", o.kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubeapi.NewForConfig(restConfig)
	if err != nil {
		return &exitError{code: exitInvalid, err: fmt.Errorf("agent: %w", err)}
	}

	log := newLogger(stderr)
	// client-go logs through klog (watch errors, Events it could not
	// write); send that to the same place in the same format.
	klog.SetSlogLogger(log)

	store, err := o.runtime.connect(ctx, log)
	if err != nil {
		return err
	}
	defer store.Close()

	opts := agent.Options{
		Client:      client,
		Store:       store,
		Namespace:   ns,
		ConfigMap:   name,
		NodeName:    o.nodeName,
		TaintKey:    o.taintKey,
		MetricsAddr: o.metricsAddr,
		Log:         log,

		KubeletConfig:    o.kubeletConfig,
		KubeletConfigDir: o.kubeletConfigDir,

		CredentialProviders: plugins,
	}
	a, err := agent.New(opts)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}
	return a.Run(ctx)
}

// longRunningConfig is the pod's service account, or --kubeconfig when
// given (for running the agent or controller outside the cluster), with
// the user agent preloader-COMMAND/VERSION. Unlike status and warm, it sets
// no client timeout: that would cut the informers' watches.
func longRunningConfig(command, kubeconfig string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, &exitError{code: exitInvalid, err: fmt.Errorf("%s: kubeconfig: %w", command, err)}
	}
	cfg.UserAgent = "preloader-" + command + "/" + version
	return cfg, nil
}
