package kubeapi_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestBinaryLinksNoClientset keeps what this package is for: the
// preloader's binary must not link client-go's generated clientset or its
// informers, whose package init registers every API group. Of the API
// types, only core/v1, coordination/v1 (Leases, the pull slots: one
// small type) and authentication/v1 (TokenRequest, the body of the
// service account tokens that credential providers with tokenAttributes
// receive: three small types, no further imports) are linked, and for
// `preloader controller`'s workloads apps/v1 and batch/v1, with
// scheduling/v1alpha3, which batch/v1's Job refers to.
func TestBinaryLinksNoClientset(t *testing.T) {
	out := binaryDeps(t)
	banned := map[string]bool{
		"k8s.io/client-go/kubernetes":        true,
		"k8s.io/client-go/kubernetes/scheme": true,
		"k8s.io/client-go/informers":         true,
	}
	allowed := map[string]bool{
		"k8s.io/api/core/v1":             true,
		"k8s.io/api/coordination/v1":     true,
		"k8s.io/api/authentication/v1":   true,
		"k8s.io/api/apps/v1":             true,
		"k8s.io/api/batch/v1":            true,
		"k8s.io/api/scheduling/v1alpha3": true,
	}
	for _, pkg := range out {
		if banned[pkg] || strings.HasPrefix(pkg, "k8s.io/api/") && !allowed[pkg] {
			t.Errorf("cmd/preloader links %s", pkg)
		}
	}
}

// TestBinaryLinksOfflineSigstore keeps the node's signature check offline
// and small: of sigstore, the binary links only the key-based verifiers
// (pkg/signature with its options, the simple-signing payload and
// cryptoutils to read PEM keys, and the protobuf enum of algorithms
// pkg/signature names), never cosign, a transparency log client, Fulcio,
// TUF or KMS, which would reach the network or grow the binary by tens of
// megabytes.
func TestBinaryLinksOfflineSigstore(t *testing.T) {
	allowed := map[string]bool{
		"github.com/sigstore/sigstore/pkg/signature":             true,
		"github.com/sigstore/sigstore/pkg/signature/options":     true,
		"github.com/sigstore/sigstore/pkg/signature/payload":     true,
		"github.com/sigstore/sigstore/pkg/cryptoutils":           true,
		"github.com/sigstore/protobuf-specs/gen/pb-go/common/v1": true,
	}
	linked := 0
	for _, pkg := range binaryDeps(t) {
		if strings.Contains(pkg, "sigstore") || strings.Contains(pkg, "theupdateframework") || strings.Contains(pkg, "go-tuf") {
			if !allowed[pkg] {
				t.Errorf("cmd/preloader links %s", pkg)
			}
			linked++
		}
	}
	if linked == 0 {
		t.Errorf("cmd/preloader links no sigstore package: the node cannot check signatures")
	}
}

func binaryDeps(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "github.com/kube-preloader/kube-preloader/cmd/preloader").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}
