package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/distribution/reference"
)

// nearProbes is how many requests RegistryNear makes at most: the first
// may pay for the connection (and, for a plain-HTTP registry, the TLS
// attempt that finds it plain), and one slow answer on busy cores should
// not make a near registry far.
const nearProbes = 3

// RegistryNear says whether the registry that a pull of ref asks first
// (the first host of its hosts.toml, else the registry itself) answers
// `GET /v2/` within d, and how fast: true at the first answer within d,
// false once nearProbes requests have each been given up after d, so it
// takes at most nearProbes*d. The answer's status (200, or 401 asking for
// credentials) does not matter, only its time. An error is a registry
// that could not be asked (refused, unknown, a bad hosts.toml).
func (c *Client) RegistryNear(ctx context.Context, ref string, d time.Duration) (bool, time.Duration, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return false, 0, fmt.Errorf("registry of %s: %w", ref, err)
	}
	hosts, err := config.ConfigureHosts(ctx, config.HostOptions{HostDir: c.hostDir})(reference.Domain(named))
	if err != nil {
		return false, 0, fmt.Errorf("registry of %s: %w", ref, err)
	}
	if len(hosts) == 0 {
		return false, 0, fmt.Errorf("registry of %s: no host to pull from", ref)
	}
	h := hosts[0]
	defer h.Client.CloseIdleConnections()
	u := (&url.URL{Scheme: h.Scheme, Host: h.Host, Path: h.Path + "/"}).String()
	for range nearProbes {
		took, err := timeGet(ctx, h.Client, u, d)
		switch {
		case err == nil && took <= d:
			return true, took, nil
		case err == nil:
			// Answered as the deadline passed: as slow as one that did not.
		case !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
			return false, 0, fmt.Errorf("registry of %s: %w", ref, err)
		}
	}
	return false, 0, nil
}

// timeGet is how long a GET of u takes to answer, given up after d (an
// error then, as when the host cannot be reached).
func timeGet(ctx context.Context, hc *http.Client, u string, d time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	resp, err := hc.Do(req)
	took := time.Since(start)
	if err != nil {
		return 0, err
	}
	// Drained, so that the next request reuses the connection.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return took, nil
}
