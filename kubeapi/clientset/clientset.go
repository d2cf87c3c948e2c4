// Package clientset serves kubeapi.Interface from client-go's generated
// clientset, for tests with its fake. It is a package of its own so that
// the preloader's binary does not link the clientset.
package clientset

import (
	"context"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kube-preloader/kube-preloader/kubeapi"
)

// New returns cs as a kubeapi.Interface.
func New(cs kubernetes.Interface) kubeapi.Interface { return clientset{cs} }

// Client is both APIs of kubeapi.
type Client interface {
	kubeapi.Interface
	kubeapi.Workloads
}

// NewWithWorkloads returns cs as a kubeapi.Interface that also serves the
// workload kinds.
func NewWithWorkloads(cs kubernetes.Interface) Client { return clientset{cs} }

type clientset struct{ cs kubernetes.Interface }

// IsWatchListSemanticsUnSupported passes on what a fake clientset says:
// it cannot serve informers' streaming lists.
func (c clientset) IsWatchListSemanticsUnSupported() bool {
	u, ok := c.cs.(interface{ IsWatchListSemanticsUnSupported() bool })
	return ok && u.IsWatchListSemanticsUnSupported()
}

func (c clientset) ConfigMaps(ns string) kubeapi.Resource[*corev1.ConfigMap, *corev1.ConfigMapList] {
	return c.cs.CoreV1().ConfigMaps(ns)
}

func (c clientset) Secrets(ns string) kubeapi.Resource[*corev1.Secret, *corev1.SecretList] {
	return c.cs.CoreV1().Secrets(ns)
}

func (c clientset) ServiceAccounts(ns string) kubeapi.Resource[*corev1.ServiceAccount, *corev1.ServiceAccountList] {
	return c.cs.CoreV1().ServiceAccounts(ns)
}

func (c clientset) Events(ns string) kubeapi.Resource[*corev1.Event, *corev1.EventList] {
	return c.cs.CoreV1().Events(ns)
}

func (c clientset) Nodes() kubeapi.Resource[*corev1.Node, *corev1.NodeList] {
	return c.cs.CoreV1().Nodes()
}

func (c clientset) Leases(ns string) kubeapi.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] {
	return c.cs.CoordinationV1().Leases(ns)
}

func (c clientset) CreateToken(ctx context.Context, ns, name string, tr *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error) {
	return c.cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, tr, metav1.CreateOptions{})
}

func (c clientset) Deployments(ns string) kubeapi.Resource[*appsv1.Deployment, *appsv1.DeploymentList] {
	return c.cs.AppsV1().Deployments(ns)
}

func (c clientset) StatefulSets(ns string) kubeapi.Resource[*appsv1.StatefulSet, *appsv1.StatefulSetList] {
	return c.cs.AppsV1().StatefulSets(ns)
}

func (c clientset) DaemonSets(ns string) kubeapi.Resource[*appsv1.DaemonSet, *appsv1.DaemonSetList] {
	return c.cs.AppsV1().DaemonSets(ns)
}

func (c clientset) Jobs(ns string) kubeapi.Resource[*batchv1.Job, *batchv1.JobList] {
	return c.cs.BatchV1().Jobs(ns)
}

func (c clientset) CronJobs(ns string) kubeapi.Resource[*batchv1.CronJob, *batchv1.CronJobList] {
	return c.cs.BatchV1().CronJobs(ns)
}
