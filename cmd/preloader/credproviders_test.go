package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCredProviderFlags(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte(`apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: p
    matchImages: ["reg.io"]
    defaultCacheDuration: 1m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
`), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders: []\n"), 0o644)
	for _, tc := range []struct {
		name        string
		f           credProviderFlags
		wantPlugins bool
		wantErr     string
	}{
		{name: "neither"},
		{name: "both", f: credProviderFlags{good, dir}, wantPlugins: true},
		{name: "config only", f: credProviderFlags{config: good}, wantErr: "--image-credential-provider-config needs --image-credential-provider-bin-dir"},
		{name: "bin dir only", f: credProviderFlags{binDir: dir}, wantErr: "--image-credential-provider-bin-dir needs --image-credential-provider-config"},
		{name: "bad config", f: credProviderFlags{bad, dir}, wantErr: "bad.yaml:3: no providers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plugins, err := tc.f.load()
			if tc.wantErr != "" {
				var ee *exitError
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &ee) || ee.code != exitInvalid {
					t.Fatalf("err = %v, want exit %d saying %q", err, exitInvalid, tc.wantErr)
				}
				return
			}
			if err != nil || (plugins != nil) != tc.wantPlugins {
				t.Fatalf("plugins %v, err %v; want plugins: %v", plugins != nil, err, tc.wantPlugins)
			}
		})
	}
}
