package daemons

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// tokenService is the token service of a registry with token auth, as
// Docker Hub's or a cloud registry's: it hands a client whose credentials
// match (basic auth on GET, or the OAuth2 password grant on POST, which
// containerd tries first) a JWT for the scopes it asks, signed with a key
// whose certificate the registry trusts.
type tokenService struct {
	URL      string // the realm
	Issued   atomic.Int64
	key      *rsa.PrivateKey
	cert     []byte // DER
	user     string
	password string
	srv      *http.Server
}

const (
	tokenIssuer   = "harness-token-service"
	tokenAudience = "harness-registry"
)

func startTokenService(user, password, certPath string) (*tokenService, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: tokenIssuer},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	// A host name, not 127.0.0.1: go-containerregistry refuses realms at
	// loopback or private IP literals.
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	s := &tokenService{URL: "http://localhost:" + port + "/token", key: key, cert: der, user: user, password: password}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve)}
	go s.srv.Serve(lis)
	return s, nil
}

func (s *tokenService) serve(w http.ResponseWriter, r *http.Request) {
	var user, password string
	var scopes []string
	field := "token"
	switch r.Method {
	case http.MethodGet:
		user, password, _ = r.BasicAuth()
		scopes = r.URL.Query()["scope"]
	case http.MethodPost:
		if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "password" {
			http.Error(w, "unsupported grant", http.StatusBadRequest)
			return
		}
		user, password = r.PostForm.Get("username"), r.PostForm.Get("password")
		scopes = strings.Fields(r.PostForm.Get("scope"))
		field = "access_token"
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if s.user != "" && (user != s.user || password != s.password) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	token, err := s.sign(user, scopes)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.Issued.Add(1)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{field: token, "expires_in": 300})
}

// sign makes the JWT distribution's token auth verifies: RS256, the
// signing certificate in x5c, and the access the scopes ask
// ("repository:team/app:pull,push").
func (s *tokenService) sign(subject string, scopes []string) (string, error) {
	type access struct {
		Type    string   `json:"type"`
		Name    string   `json:"name"`
		Actions []string `json:"actions"`
	}
	granted := []access{}
	for _, scope := range scopes {
		parts := strings.Split(scope, ":")
		if len(parts) < 3 {
			continue
		}
		granted = append(granted, access{Type: parts[0], Name: strings.Join(parts[1:len(parts)-1], ":"), Actions: strings.Split(parts[len(parts)-1], ",")})
	}
	now := time.Now()
	jti := make([]byte, 8)
	rand.Read(jti)
	header, _ := json.Marshal(map[string]any{"typ": "JWT", "alg": "RS256", "x5c": []string{base64.StdEncoding.EncodeToString(s.cert)}})
	claims, _ := json.Marshal(map[string]any{
		"iss": tokenIssuer, "sub": subject, "aud": tokenAudience,
		"exp": now.Add(5 * time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
		"jti": base64.RawURLEncoding.EncodeToString(jti), "access": granted,
	})
	payload := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(claims)
	sum := sha256.Sum256([]byte(payload))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return payload + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

func (s *tokenService) close() { s.srv.Close() }
