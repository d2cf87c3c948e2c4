package main

import (
	"fmt"
	"slices"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// kubeFlags are kubectl's flags for reaching a cluster, read the way
// kubectl reads them: --kubeconfig, else $KUBECONFIG, else ~/.kube/config,
// else the in-cluster service account.
type kubeFlags struct {
	kubeconfig string
	overrides  clientcmd.ConfigOverrides
}

// add adds --kubeconfig and --context, and -n/--namespace if withNamespace.
func (k *kubeFlags) add(cmd *cobra.Command, withNamespace bool) {
	f := cmd.Flags()
	f.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)")
	f.StringVar(&k.overrides.CurrentContext, "context", "", "the kubeconfig context to use (default: its current context)")
	cmd.RegisterFlagCompletionFunc("context", k.completeContexts)
	if withNamespace {
		f.StringVarP(&k.overrides.Context.Namespace, "namespace", "n", "", "namespace (default: the context's)")
	}
}

func (k *kubeFlags) clientConfig() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &k.overrides)
}

// restConfig is the cluster to talk to. One that cannot be loaded is a
// usage error (exit 2).
func (k *kubeFlags) restConfig() (*rest.Config, error) {
	cfg, err := k.clientConfig().ClientConfig()
	if err != nil {
		return nil, &exitError{code: exitInvalid, err: fmt.Errorf("kubeconfig: %w", err)}
	}
	// No cfg.Timeout: it would also cut warm's watches. Each request is
	// bounded by its context (kubeRequestTimeout) instead.
	cfg.UserAgent = "preloader/" + version
	return cfg, nil
}

// namespace is -n, else the context's namespace, else "default".
func (k *kubeFlags) namespace() (string, error) {
	ns, _, err := k.clientConfig().Namespace()
	if err != nil {
		return "", &exitError{code: exitInvalid, err: fmt.Errorf("kubeconfig: %w", err)}
	}
	return ns, nil
}

func (k *kubeFlags) completeContexts(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	raw, err := k.clientConfig().RawConfig()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var names []string
	for name := range raw.Contexts {
		names = append(names, name)
	}
	slices.Sort(names)
	return names, cobra.ShellCompDirectiveNoFileComp
}
