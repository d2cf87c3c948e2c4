// Command sandbox is `make demo`: it starts containerd and a private
// registry on 127.0.0.1, pushes a pause image and two private images,
// runs `preloader once` against them with a docker config, prints its
// table and cleans up.
//
// Usage: sandbox [--containerd auto|1.6|2] PATH-TO-PRELOADER
package main

import (
	"encoding/base64"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/kube-preloader/kube-preloader/integration/harness/daemons"
)

func main() {
	runtime := flag.String("containerd", "auto", "auto (2.x when the cache has it, else 1.6), 1.6 or 2")
	flag.Parse()
	flavor, err := containerdFlavor(*runtime)
	if err != nil || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: sandbox [--containerd auto|1.6|2] PATH-TO-PRELOADER")
		os.Exit(2)
	}
	t := daemons.NewRunner("demo")
	code := demo(t, flavor, flag.Arg(0))
	t.Close()
	os.Exit(code)
}

// containerdFlavor picks the demo's containerd. auto takes 2.x only when it
// is already built: building it would triple a first demo's time, and
// Debian's 1.6 shows the same preloader.
func containerdFlavor(name string) (daemons.Flavor, error) {
	switch name {
	case "2":
		return daemons.Containerd2, nil
	case "1.6":
		return daemons.Containerd16, nil
	case "auto":
		if bin, _ := daemons.Containerd2.Binaries(); daemons.CheckExecutable(bin) == nil {
			return daemons.Containerd2, nil
		}
		return daemons.Containerd16, nil
	}
	return "", fmt.Errorf("unknown containerd %q", name)
}

func demo(t *daemons.Runner, flavor daemons.Flavor, bin string) (code int) {
	defer t.Recover(&code)
	daemons.Require(t, "docker-registry", "/usr/bin/docker-registry")

	const user, password = "demo", "demo-password-not-shown"
	version := daemons.Containerd2Version
	if flavor == daemons.Containerd16 {
		version = "1.6 (Debian's package; make demo DEMO_CONTAINERD=2 builds and uses " + daemons.Containerd2Version + ")"
	}
	say("starting a registry with password authentication and containerd " + version + " on 127.0.0.1")
	reg := daemons.StartRegistry(t, daemons.RegistryOptions{Username: user, Password: password})
	pause := daemons.PushTestImages(t, reg, []daemons.ImageSpec{{Repo: "k8s/pause", Tag: "3.10", OwnLayers: 1, LayerSize: 256 << 10}})[0]
	apps := daemons.PushTestImages(t, reg, []daemons.ImageSpec{
		{Repo: "team/app", Tag: "1.4", BaseLayers: 2, OwnLayers: 2, LayerSize: 2 << 20},
		{Repo: "team/worker", Tag: "1.4", BaseLayers: 2, OwnLayers: 1, LayerSize: 2 << 20},
	})
	ctrd := daemons.StartContainerd(t, daemons.ContainerdOptions{Flavor: flavor, SandboxImage: pause.Ref})

	dir := t.TempDir()
	config := fmt.Sprintf(`# The runtime's pause image (sandboxImage: auto) lives on the private
# registry too: without it no pod on this node gets a sandbox.
sandboxImage: auto
images:
  - image: %s
  - image: %s
`, apps[0].Ref, apps[1].Ref)
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	files := map[string]string{
		"images.yaml": config,
		"config.json": fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.Host, auth),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	say("images.yaml:\n" + config)

	args := []string{"once", "--config", filepath.Join(dir, "images.yaml"),
		"--docker-config", filepath.Join(dir, "config.json"), "--cri-endpoint", ctrd.Endpoint}
	say("$ preloader " + strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	// containerd 2.x does not report its sandbox image through the CRI:
	// sandboxImage auto reads its config file, here the sandbox's own.
	cmd.Env = append(os.Environ(), "PRELOADER_CONTAINERD_CONFIG="+ctrd.ConfigFile)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "preloader once:", err)
		return 1
	}
	say("every image is present in containerd as the kubelet asks for it (CRI ImageStatus); cleaning up")
	return 0
}

func say(s string) { fmt.Printf("\n# %s\n", s) }
