package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/kube-preloader/kube-preloader/kubeapi"
)

// tokenLife is what the agent asks of a token. The kubelet binds its
// tokens to the pod that pulls; there is no such pod here, and the API
// server binds a token to a pod only of the same ServiceAccount, so these
// are unbound: the shortest life the API server grants limits what a
// leaked one is worth.
const tokenLife = 10 * time.Minute

// saTokens gives credential providers with tokenAttributes what the
// kubelet gives them for a pod: the data and a token of the ServiceAccount
// the image names, in the agent's namespace. Tokens are reused until
// 80% of their life, as the kubelet's token manager does, so that a
// provider with cacheType Token is not run for every pull.
type saTokens struct {
	client          kubeapi.Interface
	namespace       string
	serviceAccounts corelisters.ServiceAccountLister
	now             func() time.Time

	mu     sync.Mutex
	tokens map[[3]string]issuedToken
}

type issuedToken struct {
	token     string
	refreshAt time.Time
}

func (s *saTokens) ServiceAccount(_ context.Context, name string) (string, map[string]string, error) {
	sa, err := s.serviceAccounts.ServiceAccounts(s.namespace).Get(name)
	if err != nil {
		return "", nil, fmt.Errorf("serviceaccount %s/%s: %w", s.namespace, name, err)
	}
	return string(sa.UID), sa.Annotations, nil
}

func (s *saTokens) Token(ctx context.Context, name, uid, audience string) (string, error) {
	key := [3]string{name, uid, audience}
	s.mu.Lock()
	t, ok := s.tokens[key]
	s.mu.Unlock()
	now := s.now()
	if ok && now.Before(t.refreshAt) {
		return t.token, nil
	}
	life := int64(tokenLife / time.Second)
	tr, err := s.client.CreateToken(ctx, s.namespace, name, &authenticationv1.TokenRequest{
		// The API server refuses the request if the ServiceAccount was
		// replaced since its data was read.
		ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid)},
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: &life,
		},
	})
	if err != nil {
		return "", fmt.Errorf("TokenRequest for serviceaccount %s/%s: %w", s.namespace, name, err)
	}
	refreshAt := now.Add(tr.Status.ExpirationTimestamp.Sub(now) * 8 / 10)
	s.mu.Lock()
	if s.tokens == nil {
		s.tokens = map[[3]string]issuedToken{}
	}
	for k, old := range s.tokens {
		if !now.Before(old.refreshAt) {
			delete(s.tokens, k)
		}
	}
	s.tokens[key] = issuedToken{tr.Status.Token, refreshAt}
	s.mu.Unlock()
	return tr.Status.Token, nil
}
