// Karpenter's API module, whose CRDs (pkg/apis/crds) the integration tests
// install to check the NodePool the docs show, kept out of the product's
// go.mod. Nothing here builds: the tests read the CRD files from the module
// cache (go mod download -json). v1.14.1 is the newest release whose go.mod
// asks for no newer Go than the project's toolchain (v1.14.3 and v1.15.0
// ask for 1.26.10 and 1.26.9).
module github.com/kube-preloader/kube-preloader/tools/karpenter

go 1.26.8

require sigs.k8s.io/karpenter v1.14.1
