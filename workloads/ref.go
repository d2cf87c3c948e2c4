// Package workloads turns the workloads a config selects into the images
// the agents preload: which images a pod template names, where its pods
// may run, and the list `preloader controller` publishes in the agents'
// ConfigMap (key Key) for them to merge with images.yaml.
package workloads

import (
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
)

// The kinds of workload covered, as a Ref names them.
const (
	KindDeployment  = "deployment"
	KindStatefulSet = "statefulset"
	KindDaemonSet   = "daemonset"
	KindJob         = "job"
	KindCronJob     = "cronjob"
)

// kindNames are the spellings ParseRef accepts, as kubectl accepts them.
var kindNames = map[string]string{
	"deployment": KindDeployment, "deployments": KindDeployment, "deploy": KindDeployment,
	"statefulset": KindStatefulSet, "statefulsets": KindStatefulSet, "sts": KindStatefulSet,
	"daemonset": KindDaemonSet, "daemonsets": KindDaemonSet, "ds": KindDaemonSet,
	"job": KindJob, "jobs": KindJob,
	"cronjob": KindCronJob, "cronjobs": KindCronJob, "cj": KindCronJob,
}

// Ref names one workload: NAMESPACE/KIND/NAME, kind in lower case.
type Ref struct{ Namespace, Kind, Name string }

func (r Ref) String() string { return r.Namespace + "/" + r.Kind + "/" + r.Name }

// ParseRef reads NAMESPACE/KIND/NAME (shop/deployment/web); the kind is
// any of kubectl's names for it, in any case.
func ParseRef(s string) (Ref, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 || parts[0] == "" || parts[2] == "" {
		return Ref{}, fmt.Errorf("workload %q: want NAMESPACE/KIND/NAME, such as shop/deployment/web", s)
	}
	kind, ok := kindNames[strings.ToLower(parts[1])]
	if !ok {
		return Ref{}, fmt.Errorf("workload %q: kind %q is not one of deployment, statefulset, daemonset, job, cronjob", s, parts[1])
	}
	return Ref{Namespace: parts[0], Kind: kind, Name: parts[2]}, nil
}

// Workload is what the list needs of a workload object.
type Workload struct {
	Ref      Ref
	Labels   map[string]string // the workload's own labels, which selections match
	Template *corev1.PodTemplateSpec
	// Done is a Job that completed or failed: it starts no more pods.
	Done bool
	// Owned is a Job a CronJob made: the CronJob's template covers it.
	Owned bool
}

// Of returns the Workload of an object of a covered kind.
func Of(obj any) (Workload, bool) {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return Workload{Ref: Ref{o.Namespace, KindDeployment, o.Name}, Labels: o.Labels, Template: &o.Spec.Template}, true
	case *appsv1.StatefulSet:
		return Workload{Ref: Ref{o.Namespace, KindStatefulSet, o.Name}, Labels: o.Labels, Template: &o.Spec.Template}, true
	case *appsv1.DaemonSet:
		return Workload{Ref: Ref{o.Namespace, KindDaemonSet, o.Name}, Labels: o.Labels, Template: &o.Spec.Template}, true
	case *batchv1.Job:
		w := Workload{Ref: Ref{o.Namespace, KindJob, o.Name}, Labels: o.Labels, Template: &o.Spec.Template}
		for _, c := range o.Status.Conditions {
			if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
				w.Done = true
			}
		}
		for _, or := range o.OwnerReferences {
			if or.Kind == "CronJob" && or.Controller != nil && *or.Controller {
				w.Owned = true
			}
		}
		return w, true
	case *batchv1.CronJob:
		return Workload{Ref: Ref{o.Namespace, KindCronJob, o.Name}, Labels: o.Labels, Template: &o.Spec.JobTemplate.Spec.Template}, true
	}
	return Workload{}, false
}
