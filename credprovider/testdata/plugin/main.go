// A credential provider plugin for tests, built static. What it does is
// set by its provider's env (the config's env reaches it as it reaches a
// real plugin):
//
//	PLUGIN_MODE      ok (default), crash, garbage, hang, version, kind, unknown-field, keytype,
//	                 echo (answers the request's serviceAccountToken as the password)
//	PLUGIN_KEY_TYPE  cacheKeyType of the answer (default Registry)
//	PLUGIN_DURATION  cacheDuration of the answer ("" leaves it out)
//	PLUGIN_USER, PLUGIN_PASS  the credentials it answers
//	PLUGIN_RUNS      a directory: each run adds a file named after the image,
//	                 holding the request it read
//	PLUGIN_FIFO      mode hang: a FIFO it opens for reading, which blocks
//	                 until the test writes to it (it never does)
//
// The answer's auth key is the requested image's registry, or the image
// for cacheKeyType Image. Every failure mode prints PLUGIN_PASS to
// stderr, so that tests see that errors do not show it.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

type request struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Image      string `json:"image"`
	Token      string `json:"serviceAccountToken"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("read stdin: %v", err)
	}
	var req request
	if err := json.Unmarshal(data, &req); err != nil || req.Kind != "CredentialProviderRequest" || req.Image == "" {
		fail("bad request %q", data)
	}
	if dir := os.Getenv("PLUGIN_RUNS"); dir != "" {
		f, err := os.CreateTemp(dir, strings.ReplaceAll(req.Image, "/", "_")+".*")
		if err != nil {
			fail("%v", err)
		}
		_, err = f.Write(data)
		f.Close()
		if err != nil {
			fail("%v", err)
		}
	}
	pass := os.Getenv("PLUGIN_PASS")
	keyType := os.Getenv("PLUGIN_KEY_TYPE")
	if keyType == "" {
		keyType = "Registry"
	}
	authKey, _, _ := strings.Cut(req.Image, "/")
	if keyType == "Image" {
		authKey = req.Image
	}
	resp := map[string]any{
		"apiVersion":   req.APIVersion,
		"kind":         "CredentialProviderResponse",
		"cacheKeyType": keyType,
		"auth":         map[string]any{authKey: map[string]string{"username": os.Getenv("PLUGIN_USER"), "password": pass}},
	}
	if d := os.Getenv("PLUGIN_DURATION"); d != "" {
		resp["cacheDuration"] = d
	}
	switch os.Getenv("PLUGIN_MODE") {
	case "crash":
		fail("token %s rejected", pass)
	case "garbage":
		fmt.Fprintf(os.Stderr, "password=%s\n", pass)
		fmt.Printf("user=%s password=%s\n", os.Getenv("PLUGIN_USER"), pass)
		return
	case "hang":
		fmt.Fprintf(os.Stderr, "waiting with %s\n", pass)
		f, err := os.Open(os.Getenv("PLUGIN_FIFO")) // blocks: no writer ever comes
		if err == nil {
			f.Close()
		}
		fail("fifo: %v", err)
	case "version":
		resp["apiVersion"] = "credentialprovider.kubelet.k8s.io/v1alpha1"
	case "kind":
		resp["kind"] = pass
	case "unknown-field":
		resp["token"] = pass
	case "echo":
		resp["auth"] = map[string]any{authKey: map[string]string{"username": os.Getenv("PLUGIN_USER"), "password": req.Token}}
	case "keytype":
		resp["cacheKeyType"] = "Forever"
	}
	if err := json.NewEncoder(os.Stdout).Encode(resp); err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(3)
}
