package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kube-preloader/kube-preloader/artifact"
	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/cri/critest"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/nodestatus"
)

// TestAgentArtifactNotReady: an OCI artifact that containerd records
// without its content is a failure, unsupported runtime, in the status,
// never counted present: the node is not preloader.io/ready, and the
// runtime keeps no record of it.
func TestAgentArtifactNotReady(t *testing.T) {
	const model = "registry.example/models/m:1"
	var srv *critest.Server
	setup := func(s *critest.Server) {
		srv = s
		s.Publish(appImage, "app", nil)
		s.Publish(model, "model", nil)
	}
	withContainerd := func(o *Options) {
		rt, err := cri.Connect(context.Background(), srv.Endpoint)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rt.Close() })
		ctrd := critest.NewContainerd(srv)
		ctrd.Artifact(model, artifact.Shape{ConfigMediaType: "application/vnd.oci.empty.v1+json", ArtifactType: "application/vnd.example.model.v1"})
		o.Store = noderuntime.WithContainerd(rt, ctrd)
	}
	e := startWith(t, setup, withContainerd, newNode(nil), newConfigMap(testConfig("  - image: "+appImage+"\n  - image: "+model+"\n")))
	st := e.waitStatus("failed", func(st nodestatus.Status) bool { return len(st.Failed) == 1 })
	if st.Failed[0].Image != model || st.Failed[0].Reason != failure.Unsupported.String() || st.Ready() || st.Present != 1 || st.Total != 2 {
		t.Errorf("status = %+v, want %s failed %q, 1 of 2 present", st, model, failure.Unsupported)
	}
	if got := e.node().Labels[nodestatus.LabelReady]; got != "false" {
		t.Errorf("label %s = %q, want false", nodestatus.LabelReady, got)
	}
	if strings.Contains(e.logs.String(), `msg=pulled image=`+model) {
		t.Errorf("the artifact logged as pulled:\n%s", e.logs)
	}
	rt, err := cri.Connect(context.Background(), srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	// The agent retries the artifact every few milliseconds here, and a
	// retry holds its record until it is refused: what must not happen is
	// a record that stays.
	deadline := time.Now().Add(5 * time.Second)
	for {
		img, err := rt.ImageStatus(context.Background(), model)
		if err == nil && img == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ImageStatus(%s) = %v, %v for 5s; want no record left", model, img, err)
		}
		time.Sleep(time.Millisecond)
	}
}
