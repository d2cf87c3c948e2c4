package harness_test

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/integration/harness"
)

// catSource prints the file its argument names, as a pod's only work.
const catSource = `package main

import (
	"io"
	"os"
)

func main() {
	f, err := os.Open(os.Args[1])
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	io.Copy(os.Stdout, f)
}
`

// A node with Layout k3s runs its kubelet and containerd in the layout's
// mount namespace: a pod's hostPath of k3s's containerd config directory
// passes the kubelet's type check and is bind-mounted by runc, and shows
// the config.toml the harness wrote there, not anything of the host's.
func TestNodeLayout(t *testing.T) {
	k := harness.StartKube(t)
	reg := harness.StartRegistry(t, harness.RegistryOptions{})
	cat := harness.PushTestImages(t, reg, []harness.ImageSpec{{
		Repo: "cat", Tag: "1.0",
		Files:      map[string][]byte{"cat": harness.BuildGoSource(t, "cat", catSource)},
		Entrypoint: []string{"/cat"},
	}})[0]
	n := harness.StartNode(t, harness.NodeOptions{Kube: k, Layout: "k3s", Registries: []*harness.Registry{reg}})
	if n.Containerd.ConfigFile != "/var/lib/rancher/k3s/agent/etc/containerd/config.toml" || n.Containerd.Namespace == nil {
		t.Fatalf("containerd config %s, namespace %v: want k3s's, in a namespace", n.Containerd.ConfigFile, n.Containerd.Namespace)
	}

	const dir = "/var/lib/rancher/k3s/agent/etc/containerd"
	directory := corev1.HostPathDirectory
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "read-config", Namespace: "default"},
		Spec: corev1.PodSpec{
			HostNetwork:   true,
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "cat", Image: cat.Ref, Args: []string{"/k3s/config.toml"},
				VolumeMounts: []corev1.VolumeMount{{Name: "k3s", MountPath: "/k3s", ReadOnly: true}},
			}},
			Volumes: []corev1.Volume{{Name: "k3s", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &directory}}}},
		},
	}
	n.WaitServiceAccount(t, "default", "default", time.Minute)
	if _, err := k.Client.CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n.WaitPod(t, "default", pod.Name, time.Minute, "Succeeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
	logs, err := n.PodLogs("default", pod.Name, "cat")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs, `address = "/run/k3s/containerd/containerd.sock"`) || !strings.Contains(logs, `config_path = "`+dir+`/certs.d"`) {
		t.Errorf("the pod's %s/config.toml is not the node's containerd config:\n%s", dir, logs)
	}
}
