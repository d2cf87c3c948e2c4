package harness

import (
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// CosignVersion is the cosign CLI that tools/cosign/go.mod requires and
// scripts/install-deps.sh builds from it.
const CosignVersion = "v2.6.1"

// CosignBinary is that CLI; a test that needs it calls Require with it.
func CosignBinary() string {
	return filepath.Join(CacheDir(), "bin", "cosign-"+CosignVersion)
}

// CosignKey is a cosign key pair in files, the private key encrypted with
// Password.
type CosignKey struct {
	Private, Public, Password string
}

// NewCosignKey generates a key pair in a temporary directory with
// `cosign generate-key-pair`.
func NewCosignKey(t T) CosignKey {
	t.Helper()
	Require(t, "cosign "+CosignVersion+" (scripts/install-deps.sh)", CosignBinary())
	dir, err := os.MkdirTemp("", "cosign-key")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	k := CosignKey{Private: filepath.Join(dir, "cosign.key"), Public: filepath.Join(dir, "cosign.pub"), Password: "test-key-password"}
	runCosign(t, dir, k.Password, nil, "generate-key-pair")
	return k
}

// CosignSign signs ref, which should name a digest, in reg with key, as a
// signing team would with no transparency log: the signature lands in reg
// as the tag sha256-<hex>.sig. Any extra arguments go to `cosign sign`
// before ref.
func CosignSign(t T, reg *Registry, key CosignKey, ref string, extra ...string) {
	t.Helper()
	args := append([]string{"sign", "--key", key.Private, "--tlog-upload=false", "--yes"}, extra...)
	runCosign(t, "", key.Password, reg, append(args, ref)...)
}

// CosignAttest attaches to ref, in reg, an in-toto attestation of the
// predicate in file predicate, signed with key, as `cosign attest` does
// with no transparency log: the tag sha256-<hex>.att beside the image.
func CosignAttest(t T, reg *Registry, key CosignKey, ref, predicate string) {
	t.Helper()
	runCosign(t, "", key.Password, reg, "attest", "--key", key.Private, "--predicate", predicate, "--type", "custom", "--tlog-upload=false", "--yes", ref)
}

// CosignAttachSBOM attaches the SPDX JSON document in file sbom to ref, in
// reg, unsigned, as `cosign attach sbom` does: the tag sha256-<hex>.sbom
// beside the image.
func CosignAttachSBOM(t T, reg *Registry, ref, sbom string) {
	t.Helper()
	runCosign(t, "", "", reg, "attach", "sbom", "--sbom", sbom, "--type", "spdx", ref)
}

// Cosign runs any other cosign command against reg (credentials and CA
// set up as CosignSign does) and returns its combined output.
func Cosign(t T, reg *Registry, key CosignKey, args ...string) string {
	t.Helper()
	return runCosign(t, "", key.Password, reg, args...)
}

func runCosign(t T, dir, password string, reg *Registry, args ...string) string {
	t.Helper()
	Require(t, "cosign "+CosignVersion+" (scripts/install-deps.sh)", CosignBinary())
	home, err := os.MkdirTemp("", "cosign-home")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(home)
	env := []string{
		"HOME=" + home, "PATH=" + os.Getenv("PATH"),
		"COSIGN_PASSWORD=" + password,
		// No network here: never ask for a TUF root or a transparency log.
		"COSIGN_EXPERIMENTAL=0", "TUF_ROOT=" + filepath.Join(home, "tuf"),
		"DOCKER_CONFIG=" + home,
	}
	if reg != nil {
		if reg.Username != "" {
			if err := os.WriteFile(filepath.Join(home, "config.json"), []byte(DockerConfigJSON(reg.Host, reg.Username, reg.Password)), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if reg.CACertPath != "" {
			env = append(env, "SSL_CERT_FILE="+reg.CACertPath)
		} else {
			// Before the last argument, the image, so that it follows a
			// subcommand of two words (attach sbom) too.
			last := len(args) - 1
			args = append(args[:last:last], "--allow-http-registry", args[last])
		}
	}
	cmd := exec.Command(CosignBinary(), args...)
	cmd.Dir = dir
	cmd.Env = env
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cosign %v: %v\n%s", args, err, out)
	}
	t.Logf("cosign %s: %s", args[0], time.Since(start).Round(time.Millisecond))
	return string(out)
}
