// The kubelet's own answer, for TestCredentialProviderConfigOracle: does
// it accept this credential provider config and bin dir? Prints "ok" or
// its error. Built in a copy of scripts/build-kube.sh's module, as it
// imports k8s.io/kubernetes.
package main

import (
	"fmt"
	"os"

	"k8s.io/kubernetes/pkg/credentialprovider/plugin"
)

func main() {
	if err := plugin.RegisterCredentialProviderPlugins(os.Args[1], os.Args[2], nil, nil); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("ok")
}
