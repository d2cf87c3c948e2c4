package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/kube-preloader/kube-preloader/agent"
	"github.com/kube-preloader/kube-preloader/kubelet"
)

func runAgent(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		configMap   = fs.String("configmap", "", "the agent's ConfigMap, NAMESPACE/NAME (key "+agent.ConfigKey+"); pullSecrets and serviceAccounts are looked up in its namespace")
		nodeName    = fs.String("node-name", os.Getenv("NODE_NAME"), "this node's name (default: $NODE_NAME, set from the downward API)")
		kubeconfig  = fs.String("kubeconfig", "", "kubeconfig file (default: the pod's service account)")
		metricsAddr = fs.String("metrics-addr", agent.DefaultMetricsAddr, "address for /metrics, /healthz and /readyz; empty disables them")
		kubeletCfg  = fs.String("kubelet-config", kubelet.DefaultConfigFile, "the node kubelet's --config file, read for its credential verification policy; empty: do not read it")
		kubeletDir  = fs.String("kubelet-config-dir", "", "the node kubelet's --config-dir (drop-ins), if it has one")
		runtime     = addRuntimeFlags(fs)
	)
	if err := fs.Parse(args); err != nil {
		return &exitError{code: exitInvalid, err: errors.New("")}
	}
	if fs.NArg() > 0 {
		return usageError("agent: unexpected arguments %q", fs.Args())
	}
	ns, name, ok := strings.Cut(*configMap, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return usageError("agent: --configmap must be NAMESPACE/NAME, not %q", *configMap)
	}
	if *nodeName == "" {
		return usageError("agent: --node-name (or $NODE_NAME) is required")
	}

	restConfig, err := agentClusterConfig(*kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return &exitError{code: exitInvalid, err: fmt.Errorf("agent: %w", err)}
	}

	log := newLogger(stderr)
	// client-go logs through klog (watch errors, Events it could not
	// write); send that to the same place in the same format.
	klog.SetSlogLogger(log)

	store, err := runtime.connect(ctx, log)
	if err != nil {
		return err
	}
	defer store.Close()

	opts := agent.Options{
		Client:      client,
		Store:       store,
		Namespace:   ns,
		ConfigMap:   name,
		NodeName:    *nodeName,
		MetricsAddr: *metricsAddr,
		Log:         log,

		KubeletConfig:    *kubeletCfg,
		KubeletConfigDir: *kubeletDir,
	}
	a, err := agent.New(opts)
	if err != nil {
		return &exitError{code: exitInvalid, err: err}
	}
	return a.Run(ctx)
}

// agentClusterConfig is the pod's service account, or --kubeconfig when
// given (for running the agent outside the cluster). Unlike status and
// warm, it sets no client timeout: that would cut the informers' watches.
func agentClusterConfig(kubeconfig string) (*rest.Config, error) {
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
		return nil, &exitError{code: exitInvalid, err: fmt.Errorf("agent: kubeconfig: %w", err)}
	}
	cfg.UserAgent = "preloader-agent/" + version
	return cfg, nil
}
