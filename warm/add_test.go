package warm

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"

	"github.com/kube-preloader/kube-preloader/kubeapi/clientset"
	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/workloads"
)

func configMap(data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-preloader", Name: "preloader-config"}, Data: data}
}

func storedData(t *testing.T, cs *fake.Clientset) string {
	t.Helper()
	cm, err := cs.CoreV1().ConfigMaps("kube-preloader").Get(context.Background(), "preloader-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return cm.Data[ConfigKey]
}

// updates are the ConfigMap Updates the client was asked for.
func updates(cs *fake.Clientset) []clienttesting.UpdateAction {
	var out []clienttesting.UpdateAction
	for _, a := range cs.Actions() {
		if u, ok := a.(clienttesting.UpdateAction); ok && a.GetVerb() == "update" {
			out = append(out, u)
		}
	}
	return out
}

func TestAdd(t *testing.T) {
	ctx := context.Background()
	img := mustParse(t, "nginx:1")
	t.Run("adds", func(t *testing.T) {
		cs := fake.NewClientset(configMap(map[string]string{ConfigKey: "images:\n  - image: a:1\n", "other": "kept"}))
		edit, err := Add(ctx, clientset.New(cs), "kube-preloader", "preloader-config", img)
		if err != nil {
			t.Fatal(err)
		}
		want := "images:\n  - image: a:1\n  - image: nginx:1\n"
		if !edit.Added || edit.Data != want || storedData(t, cs) != want {
			t.Fatalf("edit %+v, stored %q, want %q added", edit, storedData(t, cs), want)
		}
		u := updates(cs)
		if len(u) != 1 || u[0].(clienttesting.UpdateActionImpl).UpdateOptions.FieldManager != FieldManager {
			t.Errorf("updates %v, want one by %s", u, FieldManager)
		}
		if cm := u[0].GetObject().(*corev1.ConfigMap); cm.Data["other"] != "kept" {
			t.Errorf("the update lost the ConfigMap's other keys: %v", cm.Data)
		}
	})
	t.Run("already-listed", func(t *testing.T) {
		data := "images:\n  - image: docker.io/library/nginx:1\n"
		cm := configMap(map[string]string{ConfigKey: data})
		cm.ResourceVersion = "42"
		cs := fake.NewClientset(cm)
		edit, err := Add(ctx, clientset.New(cs), "kube-preloader", "preloader-config", img)
		if err != nil || edit != (Edit{Data: data, Hash: config.Hash([]byte(data)), ResourceVersion: "42"}) || len(updates(cs)) != 0 {
			t.Fatalf("edit %+v, %v, updates %v: want the ConfigMap as it is, unwritten", edit, err, updates(cs))
		}
	})
	t.Run("derived-list-kept", func(t *testing.T) {
		derived := "images:\n  - image: corp.example/web:1\n    workloads: [shop/deployment/web]\n"
		cs := fake.NewClientset(configMap(map[string]string{ConfigKey: "images: []\n", workloads.Key: derived}))
		edit, err := Add(ctx, clientset.New(cs), "kube-preloader", "preloader-config", img)
		if err != nil {
			t.Fatal(err)
		}
		cm := updates(cs)[0].GetObject().(*corev1.ConfigMap)
		if cm.Data[workloads.Key] != derived || edit.Hash != workloads.Hash(cm.Data, ConfigKey) || edit.Hash == config.Hash([]byte(edit.Data)) {
			t.Errorf("edit %+v of %v: want %s kept and the hash of both keys", edit, cm.Data, workloads.Key)
		}
	})
	t.Run("no-data", func(t *testing.T) {
		cs := fake.NewClientset(configMap(nil))
		if edit, err := Add(ctx, clientset.New(cs), "kube-preloader", "preloader-config", img); err != nil || edit.Data != "images:\n  - image: nginx:1\n" {
			t.Fatalf("edit %+v, %v", edit, err)
		}
	})
	t.Run("not-found", func(t *testing.T) {
		_, err := Add(ctx, clientset.New(fake.NewClientset()), "kube-preloader", "preloader-config", img)
		var ce *ConfigError
		if !apierrors.IsNotFound(err) || errors.As(err, &ce) || !strings.HasPrefix(err.Error(), "ConfigMap kube-preloader/preloader-config: ") {
			t.Fatalf("%v: want the API's not found, naming the ConfigMap", err)
		}
	})
	t.Run("invalid-config", func(t *testing.T) {
		cs := fake.NewClientset(configMap(map[string]string{ConfigKey: "images: {not: a list}\n"}))
		_, err := Add(ctx, clientset.New(cs), "kube-preloader", "preloader-config", img)
		var ce *ConfigError
		if !errors.As(err, &ce) || err.Error() != "ConfigMap kube-preloader/preloader-config key images.yaml: line 1: images must be a list" {
			t.Fatalf("%v: want a ConfigError naming the key and line", err)
		}
		if len(updates(cs)) != 0 {
			t.Error("wrote an invalid config")
		}
	})
}

// Someone else's edit between Add's Get and Update makes the Update
// conflict; Add starts over from the ConfigMap with that edit and keeps it.
func TestAddRetriesAConflictKeepingTheOtherEdit(t *testing.T) {
	cs := fake.NewClientset(configMap(map[string]string{ConfigKey: "images:\n  - image: a:1\n"}))
	conflicts := 0
	cs.PrependReactor("update", "configmaps", func(clienttesting.Action) (bool, runtime.Object, error) {
		if conflicts > 0 {
			return false, nil, nil
		}
		conflicts++
		other := configMap(map[string]string{ConfigKey: "images:\n  - image: a:1\n  - image: b:1\n"})
		if err := cs.Tracker().Update(corev1.SchemeGroupVersion.WithResource("configmaps"), other, "kube-preloader"); err != nil {
			t.Error(err)
		}
		return true, nil, apierrors.NewConflict(corev1.Resource("configmaps"), "preloader-config", errors.New("the object has been modified"))
	})
	edit, err := Add(context.Background(), clientset.New(cs), "kube-preloader", "preloader-config", mustParse(t, "nginx:1"))
	want := "images:\n  - image: a:1\n  - image: b:1\n  - image: nginx:1\n"
	if err != nil || edit.Data != want || storedData(t, cs) != want || conflicts != 1 {
		t.Fatalf("edit %+v, %v after %d conflicts; stored:\n%s\nwant:\n%s", edit, err, conflicts, storedData(t, cs), want)
	}
}
