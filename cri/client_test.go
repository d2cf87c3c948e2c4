package cri_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kube-preloader/kube-preloader/cri"
	"github.com/kube-preloader/kube-preloader/cri/critest"
)

func TestConnectDiscovery(t *testing.T) {
	live := critest.Start(t)
	dir := t.TempDir()
	dead := "unix://" + filepath.Join(dir, "dead.sock")
	absent := "unix://" + filepath.Join(dir, "absent.sock")
	// A socket file nobody listens on, as after a runtime crash.
	if err := os.WriteFile(strings.TrimPrefix(dead, "unix://"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	saved := cri.DefaultEndpoints
	t.Cleanup(func() { cri.DefaultEndpoints = saved })

	tests := []struct {
		name      string
		endpoint  string
		env       string
		defaults  []string
		want      string // endpoint connected to; "" for unreachable
		wantTried []string
	}{
		{name: "flag wins", endpoint: live.Endpoint, env: dead, want: live.Endpoint},
		{name: "env next", env: live.Endpoint, defaults: []string{dead}, want: live.Endpoint},
		{name: "first default that answers", defaults: []string{absent, dead, live.Endpoint}, want: live.Endpoint},
		{name: "none answers", defaults: []string{absent, dead}, wantTried: []string{absent, dead}},
		{name: "explicit dead endpoint", endpoint: dead, wantTried: []string{dead}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(cri.EndpointEnv, tt.env)
			cri.DefaultEndpoints = tt.defaults
			c, err := cri.Connect(context.Background(), tt.endpoint)
			if tt.want != "" {
				if err != nil {
					t.Fatalf("Connect: %v", err)
				}
				defer c.Close()
				if c.Endpoint != tt.want || c.RuntimeName != "critest" {
					t.Errorf("connected to %s (%s), want %s", c.Endpoint, c.RuntimeName, tt.want)
				}
				return
			}
			var ue *cri.UnreachableError
			if !errors.As(err, &ue) {
				t.Fatalf("Connect = %v, want UnreachableError", err)
			}
			for _, p := range tt.wantTried {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("error does not name %s: %v", p, err)
				}
			}
		})
	}
}
