package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/integration/harness"
	"github.com/kube-preloader/kube-preloader/noderuntime"
)

// On each distribution's layout, emulated by its paths in a mount
// namespace of its own (managed clouds' node images share kubeadm's), the
// preloader finds containerd, its config (Talos's through imports) and the
// registry hosts directory with no path flag, and preloads the sandbox
// image that config names, from a TLS registry with auth trusted only by
// a hosts.toml in that layout's hosts directory.
func TestDistributions(t *testing.T) {
	const cred = "regcred"
	k := harness.StartKube(t)
	k.Kubectl(t, "apply", "-k", "../manifests")
	reg := harness.StartRegistry(t, harness.RegistryOptions{Username: testUser, Password: testPassword, TLS: true})
	imgs := harness.PushTestImages(t, reg, []harness.ImageSpec{
		{Repo: "pause", Tag: "3.10", OwnLayers: 1, LayerSize: 4 << 10},
		{Repo: "team/app", Tag: "1.0", BaseLayers: 1, OwnLayers: 1, LayerSize: 32 << 10},
	})
	pause, app := imgs[0].Ref, imgs[1].Ref
	auth := harness.DockerConfigJSON(reg.Host, testUser, testPassword)
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: cred, Namespace: agentNS},
		Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(auth)}}
	if _, err := k.Client.CoreV1().Secrets(agentNS).Create(context.Background(), sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	hash := harness.SetImagesYAML(t, k.Client, agentConfig("  - image: "+app+"\n    pullSecrets: ["+cred+"]\n"))
	cfg := writeFile(t, t.TempDir(), "images.yaml", imagesYAML("auto", app))

	for _, l := range noderuntime.Layouts {
		t.Run(l.Name, func(t *testing.T) {
			start := time.Now()
			defer func() { t.Logf("%s: %s", l.Name, time.Since(start).Round(time.Millisecond)) }()
			ctrd := harness.StartContainerd(t, harness.ContainerdOptions{Flavor: harness.Containerd2, SandboxImage: pause, Layout: l.Name})
			reg.TrustIn(ctrd)
			// The kubelet's node-wide credentials, where once looks for them.
			kubeletCreds := ctrd.Path("/var/lib/kubelet/config.json")
			if err := os.MkdirAll(filepath.Dir(kubeletCreds), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(kubeletCreds, []byte(auth), 0o600); err != nil {
				t.Fatal(err)
			}

			r := runIn(t, ctrd, time.Minute, "once", "--config", cfg, "-o", "json")
			if r.code != 0 {
				t.Fatalf("once: want exit 0:\n%s", r)
			}
			var out struct {
				Images []struct {
					Image  string `json:"image"`
					Status string `json:"status"`
					Guess  bool   `json:"guess"`
				} `json:"images"`
			}
			if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
				t.Fatalf("once: output is not JSON: %v\n%s", err, r)
			}
			var got []string
			for _, i := range out.Images {
				got = append(got, i.Image+" "+i.Status)
				if i.Guess {
					t.Errorf("once: %s reported as a guess", i.Image)
				}
			}
			if want := []string{pause + " pulled", app + " pulled"}; !slices.Equal(got, want) {
				t.Errorf("once reports %q, want %q (the sandbox image of %s)", got, want, l.Config)
			}
			for _, want := range []string{
				`msg="connected to containerd" address=` + l.Socket + ` layout=` + l.Name + ` config=` + l.Config,
				`msg="sandbox image" image=` + pause + ` source=` + l.Config,
			} {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("once log lacks %q:\n%s", want, r.stderr)
				}
			}
			rt, err := cri.Connect(context.Background(), "unix://"+ctrd.Path(ctrd.Address))
			if err != nil {
				t.Fatal(err)
			}
			defer rt.Close()
			for _, ref := range []string{pause, app} {
				if criImage(t, rt, ref) == "" {
					t.Errorf("CRI ImageStatus(%s): absent after once", ref)
				}
			}

			node := "node-" + l.Name
			createNode(t, k.Client, node, nil, nil)
			agent := harness.StartAgent(t, harness.AgentOptions{Bin: preloaderBin, Kubeconfig: k.KubeconfigForPodOn(t, agentNS, agentSA, node), Node: node, Containerd: ctrd})
			agent.Eventually(t, 30*time.Second, "node ready", func() string { return harness.ViewNode(k.Client, node).Shows(hash, 2, 2) })
			if v := harness.ViewNode(k.Client, node); v.Ready != "true" {
				t.Errorf("label preloader.io/ready = %q, want true", v.Ready)
			}
			assertNoSecret(t, r.stdout, r.stderr, agent.Log())
		})
	}
}

// runIn runs the preloader where ctrd's paths resolve, with nothing in its
// environment pointing it at a runtime.
func runIn(t *testing.T, ctrd *harness.Containerd, timeout time.Duration, args ...string) run {
	t.Helper()
	cmd := ctrd.Command(preloaderBin, args...)
	cmd.Env = harness.DiscoveryEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(timeout, func() { cmd.Process.Kill() })
	err := cmd.Wait()
	expired := !timer.Stop()
	r := run{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && !expired:
		r.code = ee.ExitCode()
	default:
		t.Fatalf("preloader %v: %v (timeout %s)\n%s", args, err, timeout, r)
	}
	return r
}
