package containerd

import (
	"context"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestCredentials(t *testing.T) {
	const secret = "s3cr3t-pw"
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name           string
		auth           *runtimeapi.AuthConfig
		host           string
		user, password string
		wantErr        bool
	}{
		{name: "anonymous", host: "r.example"},
		{name: "username and password", auth: &runtimeapi.AuthConfig{Username: "u", Password: secret}, host: "r.example", user: "u", password: secret},
		// The CRI sends a pull's credentials to every host serving it: a
		// hosts.toml mirror gets them too.
		{name: "any host when no server named", auth: &runtimeapi.AuthConfig{Username: "u", Password: secret}, host: "mirror.example", user: "u", password: secret},
		{name: "named server only", auth: &runtimeapi.AuthConfig{Username: "u", Password: secret, ServerAddress: "https://r.example"}, host: "mirror.example"},
		{name: "identity token", auth: &runtimeapi.AuthConfig{IdentityToken: secret}, host: "r.example", password: secret},
		{name: "auth string", auth: &runtimeapi.AuthConfig{Auth: b64("u:" + secret)}, host: "r.example", user: "u", password: secret},
		{name: "auth string with NUL padding", auth: &runtimeapi.AuthConfig{Auth: b64("u:" + secret + "\x00")}, host: "r.example", user: "u", password: secret},
		{name: "auth not base64", auth: &runtimeapi.AuthConfig{Auth: "%%" + secret}, host: "r.example", wantErr: true},
		{name: "auth without colon", auth: &runtimeapi.AuthConfig{Auth: b64(secret)}, host: "r.example", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			user, password, err := credentials(tt.auth, tt.host)
			if (err != nil) != tt.wantErr || user != tt.user || password != tt.password {
				t.Errorf("credentials() = %q, %q, %v; want %q, %q, error %v", user, password, err, tt.user, tt.password, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("error quotes the secret: %v", err)
			}
		})
	}
}

func TestKeyedMutex(t *testing.T) {
	var m keyedMutex
	ctx := context.Background()
	if err := m.Lock(ctx, "blob"); err != nil {
		t.Fatal(err)
	}
	// Another key is independent.
	if err := m.Lock(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	m.Unlock("other")

	// The same key waits; a waiter whose context ends gives up.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := m.Lock(cctx, "blob"); err != context.DeadlineExceeded {
		t.Fatalf("Lock of a held key = %v, want the context's deadline", err)
	}

	got := make(chan error)
	go func() { got <- m.Lock(ctx, "blob") }()
	select {
	case err := <-got:
		t.Fatalf("second Lock returned %v while the key was held", err)
	case <-time.After(20 * time.Millisecond):
	}
	m.Unlock("blob")
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	m.Unlock("blob")
	if len(m.locks) != 0 {
		t.Errorf("%d keys left after every lock was released", len(m.locks))
	}
}
