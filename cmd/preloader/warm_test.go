package main

import (
	"io"
	"os"
	"path/filepath"
	"testing"
)

// --configmap takes NAMESPACE/NAME, or NAME in the namespace kubectl
// would use: -n, else the context's.
func TestWarmConfigMapName(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "config")
	os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts:
- {name: plain, context: {cluster: c, user: u}}
- {name: tools, context: {cluster: c, user: u, namespace: kube-preloader}}
current-context: tools
`), 0o600)
	for _, tt := range []struct {
		configMap, namespace, context string
		wantNS, wantName              string
		invalid                       bool
	}{
		{configMap: "ops/images", wantNS: "ops", wantName: "images"},
		{configMap: "ops/images", namespace: "ops", wantNS: "ops", wantName: "images"},
		{configMap: "ops/images", namespace: "other", invalid: true},
		{configMap: "images", wantNS: "kube-preloader", wantName: "images"},
		{configMap: "images", namespace: "ops", wantNS: "ops", wantName: "images"},
		{configMap: "images", context: "plain", wantNS: "default", wantName: "images"},
		{configMap: "", invalid: true},
		{configMap: "/images", invalid: true},
		{configMap: "a/b/c", invalid: true},
	} {
		o := warmOptions{configMap: tt.configMap}
		o.kube.kubeconfig = kubeconfig
		o.kube.overrides.Context.Namespace = tt.namespace
		o.kube.overrides.CurrentContext = tt.context
		ns, name, err := o.configMapName()
		if tt.invalid {
			if code := exitCode(io.Discard, "preloader", err); code != exitInvalid {
				t.Errorf("%q: %s/%s, exit %d; want a usage error", tt.configMap, ns, name, code)
			}
			continue
		}
		if err != nil || ns != tt.wantNS || name != tt.wantName {
			t.Errorf("%q -n %q --context %q: %s/%s, %v; want %s/%s", tt.configMap, tt.namespace, tt.context, ns, name, err, tt.wantNS, tt.wantName)
		}
	}
}
