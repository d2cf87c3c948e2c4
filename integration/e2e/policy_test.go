package e2e

// Scenario k: the kubelet's credential verification (KEP-2535,
// KubeletEnsureSecretPulledImages), judged by the kubelet itself. The node
// is restarted with each policy; pods with imagePullPolicy Never and no
// imagePullSecrets ask the kubelet whether a preloaded image may be used,
// and the agent must say beforehand what the kubelet will answer.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/nodestatus"
)

const refusedEvent = "KubeletRefusesImages"

func (r *run) scenarioCredentialPolicy(t *testing.T) {
	t.Helper()
	n := r.node
	// The sandbox image is not judged: the runtime uses it, not a pod.
	judged := len(r.entries)

	// k1: the default, NeverVerifyPreloadedImages. b's pods ran on it.
	node := getNode(t, n)
	st := nodeStatus(t, node)
	if st.Policy != "NeverVerifyPreloadedImages" || st.Refused != 0 || node.Labels[nodestatus.LabelReady] != "true" {
		t.Fatalf("k1: default kubelet config: status %+v label %q, want policy NeverVerifyPreloadedImages, nothing refused, ready", st, node.Labels[nodestatus.LabelReady])
	}
	verdicts.add(verdict{
		scenario: r.row("k1 KEP-2535 default policy (NeverVerifyPreloadedImages)"),
		before:   "-",
		after:    fmt.Sprintf("b's Never pods Running; agent: policy %s, ready", st.Policy),
	})

	// k2: AlwaysVerify. The kubelet refuses every preloaded image to a pod
	// without credentials; the agent says so and takes ready back.
	restarted := time.Now()
	n.RestartKubeletWith(t, map[string]any{"imagePullCredentialsVerificationPolicy": "AlwaysVerify"}, nil)
	createPod(t, n, hostPod(n, "k-always", r.img["private"].Ref, corev1.PullNever))
	p := n.WaitContainerWaiting(t, "default", "k-always", "ErrImageNeverPull", 2*time.Minute)
	refusal := waitPodEvent(t, n, "default", "k-always", "ErrImageNeverPull", time.Minute)
	if !r.imagePresent(t, r.img["private"].Ref) {
		t.Fatalf("k2: %s is not in the runtime; the kubelet's refusal would prove nothing", r.img["private"].Ref)
	}
	node = waitNode(t, n, time.Minute, "reporting AlwaysVerify's refusals", func(node *corev1.Node) bool {
		st := nodeStatus(t, node)
		return st.Policy == "AlwaysVerify" && st.Refused == judged && node.Labels[nodestatus.LabelReady] == "false"
	})
	reported := time.Since(restarted)
	event := waitNodeEvent(t, n, refusedEvent, "AlwaysVerify", time.Minute)
	if !strings.Contains(event, "preloader allowlist") || !strings.Contains(event, "NeverVerifyAllowlistedImages") {
		t.Errorf("k2: the %s Event does not say what to set: %s", refusedEvent, event)
	}
	wide := r.command(t, "preloader status -o wide (AlwaysVerify)", time.Minute, nil, preloaderBin, "status", "-o", "wide", "--kubeconfig", r.kube.Kubeconfig)
	if wide.code != 1 || !strings.Contains(wide.out, "AlwaysVerify") || !strings.Contains(wide.out, r.img["private"].Ref) || !strings.Contains(wide.out, "refuses") {
		t.Errorf("k2: preloader status -o wide: exit %d, want 1 with the policy and the refused images:\n%s", wide.code, wide.out)
	}
	t.Logf("k2: kubelet: %s; agent: %s\n%s", refusal, event, wide.out)
	verdicts.add(verdict{
		scenario: r.row("k2 AlwaysVerify"),
		before:   fmt.Sprintf("%s, ErrImageNeverPull (image present)", p.Status.Phase),
		after: fmt.Sprintf("agent: ready=false, %d/%d refused, Warning %s, %.1fs after restart",
			nodeStatus(t, node).Refused, judged, refusedEvent, reported.Seconds()),
	})

	if r.ecr != nil {
		r.scenarioPluginCredentialsAlwaysVerify(t)
	}

	// k3: the allowlist `preloader allowlist` prints, as a kubelet drop-in.
	r.scenarioAllowlist(t, "Pending, ErrImageNeverPull (AlwaysVerify)")

	// k4: an image the allowlist does not cover joins the config: the agent
	// preloads it and reports the refusal before any pod needs it.
	late := r.img["late"].Ref
	r.entries = append(r.entries, cfgEntry{Image: late})
	edited := time.Now()
	r.writeConfig(t)
	node = waitNode(t, n, time.Minute, "reporting the image outside the allowlist", func(node *corev1.Node) bool {
		st := nodeStatus(t, node)
		return st.Complete() && st.Refused == 1 && len(st.RefusedImages) == 1 && st.RefusedImages[0] == late && node.Labels[nodestatus.LabelReady] == "false"
	})
	reported = time.Since(edited)
	waitNodeEvent(t, n, refusedEvent, late, time.Minute)
	if !r.imagePresent(t, late) {
		t.Fatalf("k4: %s not in the runtime", late)
	}
	createPod(t, n, hostPod(n, "k-late", late, corev1.PullNever))
	p = n.WaitContainerWaiting(t, "default", "k-late", "ErrImageNeverPull", 2*time.Minute)
	verdicts.add(verdict{
		scenario: r.row("k4 image outside the allowlist"),
		before:   "-",
		after: fmt.Sprintf("agent: refused, in status and Event %.1fs after the edit; Never pod: ErrImageNeverPull",
			reported.Seconds()),
	})
	for _, name := range []string{"k-always", "k-allowed", "k-late", "k-ecr-preloaded", "k-ecr-kubelet"} {
		_ = n.Client.CoreV1().Pods("default").Delete(context.Background(), name, metav1.DeleteOptions{})
	}
}

// scenarioPluginCredentialsAlwaysVerify: under AlwaysVerify, scenario h's
// two ECR images, both needing plugin credentials: the one the agent
// preloaded is refused to a Never pod without imagePullSecrets, the one
// the kubelet pulled itself with the plugin's credentials runs (its pull
// record says node credentials, which any pod of the node may use).
func (r *run) scenarioPluginCredentialsAlwaysVerify(t *testing.T) {
	t.Helper()
	n := r.node
	preloaded, pulled := ecrRef(r.ecr.preloaded), ecrRef(r.ecr.kubeletPulled)
	createPod(t, n, hostPod(n, "k-ecr-preloaded", preloaded, corev1.PullNever))
	createPod(t, n, hostPod(n, "k-ecr-kubelet", pulled, corev1.PullNever))
	p := n.WaitContainerWaiting(t, "default", "k-ecr-preloaded", "ErrImageNeverPull", 2*time.Minute)
	if !r.imagePresent(t, preloaded) {
		t.Fatalf("k2: %s is not in the runtime; the kubelet's refusal would prove nothing", preloaded)
	}
	n.WaitPodRunning(t, "default", "k-ecr-kubelet", time.Minute)
	verdicts.add(verdict{
		scenario: r.row("k2 AlwaysVerify, plugin credentials (h's images)"),
		before:   "-",
		after:    fmt.Sprintf("preloaded: %s, %s; kubelet-pulled: Running (both Never)", p.Status.Phase, harness.WaitingReason(p)),
	})
}

// scenarioAllowlist restarts the kubelet with the drop-in `preloader
// allowlist` prints for its release: a Never pod without imagePullSecrets
// runs on a preloaded private image, and the agent says ready.
func (r *run) scenarioAllowlist(t *testing.T, before string) {
	t.Helper()
	n := r.node
	dropIn := r.allowlist(t)
	restarted := time.Now()
	n.RestartKubeletWith(t, nil, map[string]string{"50-preloader.conf": dropIn})
	createPod(t, n, hostPod(n, "k-allowed", r.img["private"].Ref, corev1.PullNever))
	n.WaitPodRunning(t, "default", "k-allowed", 2*time.Minute)
	toRunning := time.Since(restarted)
	waitNode(t, n, time.Minute, "ready under the allowlist", func(node *corev1.Node) bool {
		st := nodeStatus(t, node)
		return st.Policy == "NeverVerifyAllowlistedImages" && st.Refused == 0 && node.Labels[nodestatus.LabelReady] == "true"
	})
	entries := strings.Count(dropIn, "\n- ")
	verdicts.add(verdict{
		scenario:  r.row("k3 allowlist from preloader allowlist"),
		before:    before,
		after:     fmt.Sprintf("Running (Never, no imagePullSecrets) with the printed drop-in (%d entries); ready", entries),
		toRunning: toRunning,
	})
}

// allowlist runs `preloader allowlist -o drop-in` on the run's images.yaml
// and returns what it printed on stdout, the drop-in file.
func (r *run) allowlist(t *testing.T) string {
	t.Helper()
	config := filepath.Join(t.TempDir(), "images.yaml")
	write(t, config, r.renderConfig())
	cmd := exec.Command(preloaderBin, "allowlist", "--config", config, "-o", "drop-in", "--kubelet-version", r.kind.kubelet)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("preloader allowlist: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	r.outputs = append(r.outputs, namedText{"preloader allowlist", stdout.String() + stderr.String()})
	t.Logf("preloader allowlist -o drop-in:\n%s(stderr)\n%s", stdout.String(), stderr.String())
	return stdout.String()
}

func nodeStatus(t *testing.T, node *corev1.Node) nodestatus.Status {
	t.Helper()
	var st nodestatus.Status
	if raw := node.Annotations[nodestatus.AnnotationStatus]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &st); err != nil {
			t.Fatalf("node %s: %s: %v", node.Name, nodestatus.AnnotationStatus, err)
		}
	}
	return st
}

// waitNodeEvent waits for an Event on the Node with reason whose message
// contains what, and returns the message.
func waitNodeEvent(t *testing.T, n *harness.Node, reason, what string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		list, err := n.Client.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Node,involvedObject.name=" + n.Name + ",reason=" + reason,
		})
		if err == nil {
			for _, e := range list.Items {
				if strings.Contains(e.Message, what) {
					return e.Message
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s: no %s Event mentioning %q after %v (%v)", n.Name, reason, what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
