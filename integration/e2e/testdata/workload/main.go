// Command workload is the test workload of the e2e: a static binary that
// says which image it is (/VERSION), proves it reaches the API server with its pod's
// ServiceAccount token the way client-go's in-cluster config does
// (KUBERNETES_SERVICE_HOST/PORT, the mounted token and ca.crt), prints a
// file it is asked to (an image volume's), and then waits for SIGTERM.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	version, _ := os.ReadFile("/VERSION") // the image's tag, put there by the test
	fmt.Printf("workload %s started\n", bytes.TrimSpace(version))
	if path := os.Getenv("WORKLOAD_PRINT_FILE"); path != "" {
		b, err := os.ReadFile(path)
		fmt.Printf("file %s: %q %v\n", path, bytes.TrimSpace(b), err)
	}
	if os.Getenv("WORKLOAD_CHECK_API") != "" {
		if user, err := whoami(); err != nil {
			fmt.Printf("api: error: %v\n", err)
		} else {
			fmt.Printf("api: authenticated as %s\n", user)
		}
	}
	<-c
	fmt.Println("workload stopping")
}

// whoami asks the API server who the pod's token is (SelfSubjectReview,
// allowed to every authenticated user).
func whoami() (string, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return "", fmt.Errorf("KUBERNETES_SERVICE_HOST/PORT not set")
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return "", err
	}
	ca, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return "", fmt.Errorf("no certificate in ca.crt")
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	body := []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)
	url := "https://" + net.JoinHostPort(host, port) + "/apis/authentication.k8s.io/v1/selfsubjectreviews"
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+string(bytes.TrimSpace(token)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	var r struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return "", err
	}
	return r.Status.UserInfo.Username, nil
}
