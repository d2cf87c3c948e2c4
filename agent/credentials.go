package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/credprovider"
	"github.com/kube-preloader/kube-preloader/cri/keyring"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
)

// credentials turns each image's pullSecrets and serviceAccount into a
// keyring, from the informers' caches, as the kubelet does for a pod's
// imagePullSecrets.
//
// Nothing derived from a Secret's data leaves here except as the AuthConfig
// handed to the runtime. Problems name the Secret, never its content; the
// keyring's own errors are written to that rule too.
type credentials struct {
	namespace       string
	secrets         corelisters.SecretLister
	serviceAccounts corelisters.ServiceAccountLister
	// elsewhere are the Secrets named NAMESPACE/NAME, of other
	// namespaces.
	elsewhere *secretWatches
}

// imageAuth is what credentials found for one run.
type imageAuth struct {
	// keyrings per credential source (see sourceKey); images that name the
	// same Secrets share one.
	keyrings map[string]*keyring.Keyring
	// blocked holds, per pull reference (the image's name and, if it has
	// one, its mirror reference), why it must not be pulled: a Secret or
	// ServiceAccount it names is missing or unusable. Pulling it anyway,
	// anonymously, would only earn a misleading "unauthorized".
	blocked map[string]string
	// plugins are the node's credential providers for this run, nil if
	// it has none; a reference whose provider failed is blocked too.
	plugins *credprovider.Gate
}

// Auth is the engine's Auth: the credentials for whatever reference it
// pulls, the image's own or its mirror's, from the image's keyring, then
// from the credential providers, the kubelet's order. Lookup may run
// concurrently; everything was added before the run.
func (ia imageAuth) Auth(img config.Image) []*runtimeapi.AuthConfig {
	var auths []*runtimeapi.AuthConfig
	if k := ia.keyrings[sourceKey(img)]; k != nil {
		auths = k.Lookup(img.Name)
	}
	return append(auths, ia.plugins.Auth(img.Name, img.ServiceAccount, img.PullRefs()...)...)
}

// blockedErr is why ref must not be pulled, nil if it may be.
func (ia imageAuth) blockedErr(ref string) error {
	if why, ok := ia.blocked[ref]; ok {
		return credentialsError(why)
	}
	return ia.plugins.Err(ref)
}

// sourceKey identifies where an image's credentials come from.
func sourceKey(img config.Image) string {
	return strings.Join(img.PullSecrets, ",") + "|" + img.ServiceAccount
}

func (c credentials) resolve(images []config.Image) imageAuth {
	out := imageAuth{keyrings: map[string]*keyring.Keyring{}, blocked: map[string]string{}}
	problems := map[string]string{}
	for _, img := range images {
		key := sourceKey(img)
		if key == "|" {
			continue // anonymous
		}
		if _, done := out.keyrings[key]; !done {
			if _, done := problems[key]; !done {
				k, problem := c.keyring(img)
				if problem != "" {
					problems[key] = problem
				} else {
					out.keyrings[key] = k
				}
			}
		}
		if problem, ok := problems[key]; ok {
			for _, ref := range img.PullRefs() {
				out.blocked[ref] = problem
			}
		}
	}
	return out
}

// keyring builds the keyring of img's pullSecrets, then its
// serviceAccount's imagePullSecrets, or says why it cannot.
func (c credentials) keyring(img config.Image) (*keyring.Keyring, string) {
	names := append([]string(nil), img.PullSecrets...)
	if img.ServiceAccount != "" {
		sa, err := c.serviceAccounts.ServiceAccounts(c.namespace).Get(img.ServiceAccount)
		if err != nil {
			return nil, fmt.Sprintf("serviceaccount %s/%s not found", c.namespace, img.ServiceAccount)
		}
		for _, ref := range sa.ImagePullSecrets {
			names = append(names, ref.Name)
		}
	}
	k := &keyring.Keyring{}
	for _, name := range names {
		s, problem := c.secret(name)
		if problem != "" {
			return nil, problem
		}
		// The error names the Secret, its type and what is wrong, by key
		// and position, never by value.
		if err := k.AddFromSecret(string(s.Type), s.Data, fmt.Sprintf("secret %s/%s", s.Namespace, s.Name)); err != nil {
			return nil, err.Error()
		}
	}
	return k, ""
}

// secret finds a pull secret: NAME in the agent's namespace, or
// NAMESPACE/NAME, which a workload selection with usePullSecrets names.
func (c credentials) secret(name string) (*corev1.Secret, string) {
	ns, n, qualified := splitQualified(name)
	if !qualified || ns == c.namespace {
		if !qualified {
			ns, n = c.namespace, name
		}
		s, err := c.secrets.Secrets(ns).Get(n)
		if err != nil {
			return nil, fmt.Sprintf("secret %s/%s not found", ns, n)
		}
		return s, ""
	}
	return c.elsewhere.get(ns, n)
}

// elsewhereKeys are the Secrets of other namespaces that images name, as
// NAMESPACE/NAME.
func (c credentials) elsewhereKeys(images []config.Image) []string {
	var keys []string
	for _, img := range images {
		for _, name := range img.PullSecrets {
			if ns, _, ok := splitQualified(name); ok && ns != c.namespace && !slices.Contains(keys, name) {
				keys = append(keys, name)
			}
		}
	}
	return keys
}

// splitQualified splits NAMESPACE/NAME; ok is false for a bare NAME.
func splitQualified(s string) (ns, name string, ok bool) {
	return strings.Cut(s, "/")
}

// gatedStore refuses, without asking the runtime, to pull references
// whose credentials are missing or whose credential provider failed, by
// either way of pulling, so that the engine still checks whether the
// image is present (it may be) and the credential problem becomes the
// reason when it is not.
type gatedStore struct {
	noderuntime.Store
	creds imageAuth
}

func (g gatedStore) PullImage(ctx context.Context, ref string, auth *runtimeapi.AuthConfig) (string, error) {
	if err := g.creds.blockedErr(ref); err != nil {
		return "", err
	}
	return g.Store.PullImage(ctx, ref, auth)
}

func (g gatedStore) PullDirect(ctx context.Context, ref string, auth *runtimeapi.AuthConfig, maxDownloads int) error {
	if err := g.creds.blockedErr(ref); err != nil {
		return err
	}
	return g.Store.PullDirect(ctx, ref, auth, maxDownloads)
}

// credentialsError is a pull refused for missing credentials; its text is
// its own reason ("secret NS/NAME not found"), which preload.Classify
// reports.
type credentialsError string

func (e credentialsError) Error() string          { return string(e) }
func (e credentialsError) Reason() failure.Reason { return failure.Credentials(string(e)) }
