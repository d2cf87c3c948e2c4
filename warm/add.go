package warm

import (
	"context"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"

	"github.com/kube-preloader/kube-preloader/kubeapi"
	"github.com/kube-preloader/kube-preloader/workloads"
)

// FieldManager names warm's writes in managedFields.
const FieldManager = "preloader-warm"

// requestTimeout bounds each API request of Add, so that a black-holed API
// server ends in an error rather than a hang.
const requestTimeout = 30 * time.Second

// backoff is generous because every concurrent editor of the ConfigMap can
// make one attempt conflict.
var backoff = wait.Backoff{Steps: 12, Duration: 10 * time.Millisecond, Factor: 2, Jitter: 0.5, Cap: 2 * time.Second}

// Edit is the ConfigMap once it lists the image.
type Edit struct {
	Data            string // its images.yaml
	Hash            string // the config hash the agents report for it
	ResourceVersion string
	Added           bool // false: an entry already named the image
}

// ConfigError is an images.yaml that warm cannot add to: the user's to fix,
// where Add's other errors are the API server's.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Add appends the image to the ConfigMap's images.yaml, re-reading and
// retrying when someone else changed the ConfigMap in between, so no edit
// is lost.
func Add(ctx context.Context, cs kubeapi.Interface, ns, name string, img Image) (Edit, error) {
	var edit Edit
	err := retry.RetryOnConflict(backoff, func() error {
		var err error
		edit, err = addOnce(ctx, cs, ns, name, img)
		return err
	})
	var ce *ConfigError
	switch {
	case err == nil:
		return edit, nil
	case errors.As(err, &ce):
		return Edit{}, err
	default:
		return Edit{}, fmt.Errorf("ConfigMap %s/%s: %w", ns, name, err)
	}
}

// addOnce is one attempt of Add: Get, edit, Update.
func addOnce(ctx context.Context, cs kubeapi.Interface, ns, name string, img Image) (Edit, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	cms := cs.ConfigMaps(ns)
	cm, err := cms.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return Edit{}, err
	}
	old := cm.Data[ConfigKey]
	out, changed, err := AddImage(old, img)
	if err != nil {
		return Edit{}, &ConfigError{fmt.Errorf("ConfigMap %s/%s key %s: %w", ns, name, ConfigKey, err)}
	}
	if !changed {
		return Edit{Data: old, Hash: workloads.Hash(cm.Data, ConfigKey), ResourceVersion: cm.ResourceVersion}, nil
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[ConfigKey] = out
	// Update carries the resourceVersion we read: a concurrent edit makes
	// it fail with Conflict, and we start over from a fresh Get.
	updated, err := cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: FieldManager})
	if err != nil {
		return Edit{}, err
	}
	return Edit{Data: updated.Data[ConfigKey], Hash: workloads.Hash(updated.Data, ConfigKey), ResourceVersion: updated.ResourceVersion, Added: true}, nil
}
