package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kube-preloader/kube-preloader/nodestatus"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// A config that selects workloads is not applied before preloader
// controller has listed their images: applied, its explicit images alone
// would make a new node ready and lift its taint with none of the
// workloads' images there. Once the list is written, it is, and the
// condition says what is missing while the agent pulls it.
func TestWorkloadsWaitForTheControllersList(t *testing.T) {
	taint := corev1.Taint{Key: nodestatus.TaintNotReady, Effect: corev1.TaintEffectNoSchedule}
	cm := newConfigMap(testConfig("  []\nworkloads:\n  - namespaces: [shop]\n"))
	e := start(t, nil, newNode(nil, taint), cm)
	eventually(t, "condition WorkloadsNotListed", func() (bool, string) {
		c := e.condition()
		return c.Reason == nodestatus.ReasonWorkloadsNotListed && c.Status == corev1.ConditionFalse, fmt.Sprintf("%+v", c)
	})
	if c := e.condition(); !strings.Contains(c.Message, workloads.Key) {
		t.Errorf("condition while the list is missing: %+v, want it to name %s", c, workloads.Key)
	}
	e.wakeAndWait()
	if meta, _ := nodeWrites(e.client.Actions()); meta != 0 {
		t.Errorf("%d writes of the Node before the controller's list, want 0", meta)
	}
	if n := e.node(); len(n.Spec.Taints) != 1 || n.Labels[nodestatus.LabelReady] != "" {
		t.Errorf("before the controller's list: taints %v, labels %v; want the taint kept and no label", n.Spec.Taints, n.Labels)
	}
	if n := e.runtime.Calls("PullImage"); n != 0 {
		t.Errorf("%d pulls before the controller's list", n)
	}

	cm.Data[workloads.Key] = workloads.Encode(workloads.List{Images: []workloads.Image{{Image: appImage, Workloads: []string{"shop/deployment/web"}}}})
	if _, err := e.client.CoreV1().ConfigMaps(testNS).Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitStatus("ready with the listed image", func(st nodestatus.Status) bool { return st.Total == 1 && st.Ready() })
	if n := e.node(); len(n.Spec.Taints) != 0 || n.Labels[nodestatus.LabelReady] != "true" {
		t.Errorf("after the controller's list: taints %v, labels %v; want ready and no taint", n.Spec.Taints, n.Labels)
	}
	eventually(t, "condition True", func() (bool, string) {
		c := e.condition()
		return c.Status == corev1.ConditionTrue, fmt.Sprintf("%+v", c)
	})
	// Before the pull, the condition left "nothing is preloaded" for the
	// image still missing; then True.
	var reasons []string
	for _, a := range writes(e.client.Actions()) {
		if p, ok := a.(k8stesting.PatchAction); ok && a.GetResource().Resource == "nodes" && a.GetSubresource() == "status" {
			for _, r := range []string{nodestatus.ReasonWorkloadsNotListed, nodestatus.ReasonImagesMissing, nodestatus.ReasonImagesPresent} {
				if strings.Contains(string(p.GetPatch()), `"reason":"`+r+`"`) {
					reasons = append(reasons, r)
				}
			}
		}
	}
	want := []string{nodestatus.ReasonWorkloadsNotListed, nodestatus.ReasonImagesMissing, nodestatus.ReasonImagesPresent}
	if !slices.Equal(reasons, want) {
		t.Errorf("the condition's reasons, write by write: %v, want %v", reasons, want)
	}
}
