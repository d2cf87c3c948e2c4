// Package kubeapi is the part of the Kubernetes API the preloader uses: the
// core/v1 resources it reads and writes, as typed clients built on
// client-go's generic client (gentype), and informers over them.
//
// It exists instead of client-go's generated clientset because importing
// that clientset registers every API group of Kubernetes at start: in the
// agent that was about 17 MiB of resident memory for code and type data it
// never uses. A clientset (a fake one in tests) still serves through
// FromClientset in kubeapi/clientset.
package kubeapi

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/gentype"
	"k8s.io/client-go/rest"
)

// Resource is a typed client of one resource, as gentype and the
// generated clientset's typed clients both provide it.
type Resource[T, L runtime.Object] interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (T, error)
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Create(ctx context.Context, obj T, opts metav1.CreateOptions) (T, error)
	Update(ctx context.Context, obj T, opts metav1.UpdateOptions) (T, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error)
}

// Interface is the API the preloader uses.
type Interface interface {
	ConfigMaps(namespace string) Resource[*corev1.ConfigMap, *corev1.ConfigMapList]
	Secrets(namespace string) Resource[*corev1.Secret, *corev1.SecretList]
	ServiceAccounts(namespace string) Resource[*corev1.ServiceAccount, *corev1.ServiceAccountList]
	Events(namespace string) Resource[*corev1.Event, *corev1.EventList]
	Nodes() Resource[*corev1.Node, *corev1.NodeList]
	// Leases are the agents' pull slots (package waves).
	Leases(namespace string) Resource[*coordinationv1.Lease, *coordinationv1.LeaseList]
	// CreateToken is a TokenRequest for the ServiceAccount name: the
	// tokens credential providers with tokenAttributes receive.
	CreateToken(ctx context.Context, namespace, name string, tr *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error)
}

// Workloads is the API of the kinds `preloader controller` derives image
// lists from. It is apart from Interface: the agent never reads them.
type Workloads interface {
	Deployments(namespace string) Resource[*appsv1.Deployment, *appsv1.DeploymentList]
	StatefulSets(namespace string) Resource[*appsv1.StatefulSet, *appsv1.StatefulSetList]
	DaemonSets(namespace string) Resource[*appsv1.DaemonSet, *appsv1.DaemonSetList]
	Jobs(namespace string) Resource[*batchv1.Job, *batchv1.JobList]
	CronJobs(namespace string) Resource[*batchv1.CronJob, *batchv1.CronJobList]
}

// Scheme knows the core/v1 types, all the preloader reads, writes and
// records Events about, coordination/v1 Leases, a single small type,
// authentication/v1, whose TokenRequest is the body of a ServiceAccount's
// token subresource (three small types), and the workload kinds of apps/v1
// and batch/v1 that the controller reads.
var Scheme = runtime.NewScheme()

var (
	codecs         = serializer.NewCodecFactory(Scheme)
	parameterCodec = runtime.NewParameterCodec(Scheme)
)

func init() {
	if err := corev1.AddToScheme(Scheme); err != nil {
		panic(err)
	}
	if err := coordinationv1.AddToScheme(Scheme); err != nil {
		panic(err)
	}
	if err := authenticationv1.AddToScheme(Scheme); err != nil {
		panic(err)
	}
	if err := appsv1.AddToScheme(Scheme); err != nil {
		panic(err)
	}
	if err := batchv1.AddToScheme(Scheme); err != nil {
		panic(err)
	}
	metav1.AddToGroupVersion(Scheme, corev1.SchemeGroupVersion)
}

// Client is Interface on a REST client of the API server's core/v1.
type Client struct {
	rest         rest.Interface
	coordination rest.Interface
	apps, batch  rest.Interface
}

var (
	_ Interface = (*Client)(nil)
	_ Workloads = (*Client)(nil)
)

// NewForConfig returns a Client of the API server cfg names, configured as
// the generated core/v1 client configures itself, protobuf preferred.
func NewForConfig(cfg *rest.Config) (*Client, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.APIPath = "/api"
	c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(Scheme, codecs).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	group := func(gv schema.GroupVersion) (rest.Interface, error) {
		gc := rest.CopyConfig(c)
		gc.GroupVersion = &gv
		gc.APIPath = "/apis"
		r, err := rest.RESTClientFor(gc)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client for %s: %w", gv.Group, err)
		}
		return r, nil
	}
	out := &Client{rest: rc}
	if out.coordination, err = group(coordinationv1.SchemeGroupVersion); err != nil {
		return nil, err
	}
	if out.apps, err = group(appsv1.SchemeGroupVersion); err != nil {
		return nil, err
	}
	if out.batch, err = group(batchv1.SchemeGroupVersion); err != nil {
		return nil, err
	}
	return out, nil
}

func resource[T interface {
	runtime.Object
	metav1.Object
}, L runtime.Object](c *Client, name, namespace string, newObj func() T, newList func() L) *gentype.ClientWithList[T, L] {
	return resourceOf(c.rest, name, namespace, newObj, newList)
}

func resourceOf[T interface {
	runtime.Object
	metav1.Object
}, L runtime.Object](rc rest.Interface, name, namespace string, newObj func() T, newList func() L) *gentype.ClientWithList[T, L] {
	return gentype.NewClientWithList(name, rc, parameterCodec, namespace, newObj, newList, gentype.PrefersProtobuf[T]())
}

func (c *Client) ConfigMaps(namespace string) Resource[*corev1.ConfigMap, *corev1.ConfigMapList] {
	return resource(c, "configmaps", namespace, func() *corev1.ConfigMap { return &corev1.ConfigMap{} }, func() *corev1.ConfigMapList { return &corev1.ConfigMapList{} })
}

func (c *Client) Secrets(namespace string) Resource[*corev1.Secret, *corev1.SecretList] {
	return resource(c, "secrets", namespace, func() *corev1.Secret { return &corev1.Secret{} }, func() *corev1.SecretList { return &corev1.SecretList{} })
}

func (c *Client) ServiceAccounts(namespace string) Resource[*corev1.ServiceAccount, *corev1.ServiceAccountList] {
	return resource(c, "serviceaccounts", namespace, func() *corev1.ServiceAccount { return &corev1.ServiceAccount{} }, func() *corev1.ServiceAccountList { return &corev1.ServiceAccountList{} })
}

func (c *Client) Events(namespace string) Resource[*corev1.Event, *corev1.EventList] {
	return resource(c, "events", namespace, func() *corev1.Event { return &corev1.Event{} }, func() *corev1.EventList { return &corev1.EventList{} })
}

func (c *Client) Nodes() Resource[*corev1.Node, *corev1.NodeList] {
	return resource(c, "nodes", "", func() *corev1.Node { return &corev1.Node{} }, func() *corev1.NodeList { return &corev1.NodeList{} })
}

func (c *Client) Leases(namespace string) Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] {
	return resourceOf(c.coordination, "leases", namespace, func() *coordinationv1.Lease { return &coordinationv1.Lease{} }, func() *coordinationv1.LeaseList { return &coordinationv1.LeaseList{} })
}

func (c *Client) Deployments(namespace string) Resource[*appsv1.Deployment, *appsv1.DeploymentList] {
	return resourceOf(c.apps, "deployments", namespace, func() *appsv1.Deployment { return &appsv1.Deployment{} }, func() *appsv1.DeploymentList { return &appsv1.DeploymentList{} })
}

func (c *Client) StatefulSets(namespace string) Resource[*appsv1.StatefulSet, *appsv1.StatefulSetList] {
	return resourceOf(c.apps, "statefulsets", namespace, func() *appsv1.StatefulSet { return &appsv1.StatefulSet{} }, func() *appsv1.StatefulSetList { return &appsv1.StatefulSetList{} })
}

func (c *Client) DaemonSets(namespace string) Resource[*appsv1.DaemonSet, *appsv1.DaemonSetList] {
	return resourceOf(c.apps, "daemonsets", namespace, func() *appsv1.DaemonSet { return &appsv1.DaemonSet{} }, func() *appsv1.DaemonSetList { return &appsv1.DaemonSetList{} })
}

func (c *Client) Jobs(namespace string) Resource[*batchv1.Job, *batchv1.JobList] {
	return resourceOf(c.batch, "jobs", namespace, func() *batchv1.Job { return &batchv1.Job{} }, func() *batchv1.JobList { return &batchv1.JobList{} })
}

func (c *Client) CronJobs(namespace string) Resource[*batchv1.CronJob, *batchv1.CronJobList] {
	return resourceOf(c.batch, "cronjobs", namespace, func() *batchv1.CronJob { return &batchv1.CronJob{} }, func() *batchv1.CronJobList { return &batchv1.CronJobList{} })
}

func (c *Client) CreateToken(ctx context.Context, namespace, name string, tr *authenticationv1.TokenRequest) (*authenticationv1.TokenRequest, error) {
	out := &authenticationv1.TokenRequest{}
	err := c.rest.Post().Namespace(namespace).Resource("serviceaccounts").Name(name).SubResource("token").
		Body(tr).Do(ctx).Into(out)
	if err != nil {
		return nil, err
	}
	return out, nil
}
