// Package storetest is the runtime contract the preloader relies on, as
// one suite that every noderuntime.Store passes: the in-process fake of
// cri/critest in the unit tests, containerd 2.x and 1.6 in integration/.
// A runtime the preloader learns to drive joins by passing it. Each check
// goes through the Store as the engine calls it, and a runtime that lacks
// an operation must refuse it with *noderuntime.UnsupportedError, which
// the suite asserts rather than skips.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/distribution/reference"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload"
)

// Image is an image of the backend's registry.
type Image struct {
	Ref    string // tag reference, normalized: host/repo:tag
	Digest string // its manifest digest
}

// Backend is a runtime under test, with what its registry serves. The
// suite's steps are named by the roles (noderuntime.Presence, Puller, …)
// whose methods they check.
type Backend struct {
	Store noderuntime.Store
	// Public is pulled without credentials; Private needs Auth and is
	// refused with none or with WrongAuth. The two are different images,
	// neither on the node when Run starts.
	Public, Private Image
	Auth, WrongAuth *runtimeapi.AuthConfig
	// Missing is a tag reference the registry of Public lacks.
	Missing string
	// PinsReported says whether the CRI reports a pin in ImageStatus
	// (containerd 2.x); containerd 1.6 honours the pin label and reports
	// none, so the suite asserts Pinned stays false there.
	PinsReported bool
}

var imageID = regexp.MustCompile(`^(sha256:)?[0-9a-f]{64}$`)

// visible bounds how long a change made through the runtime's own API
// (a tag, a label, a removed record) may take to show in the CRI:
// containerd's CRI plugin learns of them from events.
const visible = 10 * time.Second

const (
	ownerA = "once:/etc/conformance/a.yaml"
	ownerB = "agent:conformance/b"
)

// Run checks b against the contract. Its steps build on each other (the
// image pulled first is the one labelled, pinned and removed later), so
// they run in order and a failed step stops the rest.
func Run(t *testing.T, b Backend) {
	ctx := context.Background()
	s := b.Store
	pub := b.Public
	digestRef := repo(t, pub.Ref) + "@" + pub.Digest
	alias := repo(t, pub.Ref) + ":conformance-alias"
	var id string

	step(t, "Presence: absent is nil, not an error", func(t *testing.T) {
		for _, ref := range []string{pub.Ref, digestRef, b.Missing} {
			if img, err := s.ImageStatus(ctx, ref); err != nil || img != nil {
				t.Errorf("ImageStatus(%s) = %v, %v; want nil, nil", ref, img, err)
			}
		}
		listed, err := s.ListImages(ctx)
		if err != nil {
			t.Fatalf("ListImages: %v", err)
		}
		if img := find(listed, pub.Ref); img != nil {
			t.Errorf("ListImages lists %s before any pull: %v", pub.Ref, img)
		}
		if err := s.RemoveImage(ctx, pub.Ref); err != nil {
			t.Errorf("RemoveImage of an absent image: %v, want nil", err)
		}
	})

	step(t, "Puller: a public image pulls without credentials", func(t *testing.T) {
		got, err := s.PullImage(ctx, pub.Ref, nil)
		if err != nil {
			t.Fatalf("PullImage(%s): %v", pub.Ref, err)
		}
		// containerd's IDs are sha256:<hex>, CRI-O's the bare hex.
		if !imageID.MatchString(got) {
			t.Errorf("PullImage(%s) = %q, want the image ID", pub.Ref, got)
		}
		id = got
	})

	step(t, "Presence: by name, digest reference, name:tag@digest and ID", func(t *testing.T) {
		img := status(t, s, pub.Ref)
		if img.Id != id {
			t.Errorf("ImageStatus(%s).Id = %s, want the pull's %s", pub.Ref, img.Id, id)
		}
		if !slices.Contains(img.RepoTags, pub.Ref) || !slices.Contains(img.RepoDigests, digestRef) {
			t.Errorf("ImageStatus(%s): tags %v digests %v, want %s and %s among them", pub.Ref, img.RepoTags, img.RepoDigests, pub.Ref, digestRef)
		}
		if img.Size == 0 {
			t.Errorf("ImageStatus(%s).Size = 0", pub.Ref)
		}
		for _, ref := range []string{digestRef, pub.Ref + "@" + pub.Digest, id} {
			if got := status(t, s, ref); got.Id != id {
				t.Errorf("ImageStatus(%s).Id = %s, want %s", ref, got.Id, id)
			}
		}
		listed, err := s.ListImages(ctx)
		if err != nil {
			t.Fatalf("ListImages: %v", err)
		}
		n := 0
		for _, l := range listed {
			if l.Id == id {
				n++
				if !slices.Contains(l.RepoTags, pub.Ref) || !slices.Contains(l.RepoDigests, digestRef) {
					t.Errorf("ListImages: %s has tags %v digests %v, want %s and %s among them", id, l.RepoTags, l.RepoDigests, pub.Ref, digestRef)
				}
			}
		}
		if n != 1 {
			t.Errorf("ListImages lists %s %d times, want once", id, n)
		}
	})

	step(t, "Puller, Refresher: credentials; none and wrong ones are unauthorized, the right ones pull", func(t *testing.T) {
		secrets := []string{b.Auth.Password, b.WrongAuth.Password}
		for _, tt := range []struct {
			name string
			auth *runtimeapi.AuthConfig
		}{{"no credentials", nil}, {"wrong credentials", b.WrongAuth}} {
			_, err := s.PullImage(ctx, b.Private.Ref, tt.auth)
			wantReason(t, "PullImage with "+tt.name, err, failure.Unauthorized, secrets)
			ifCan(t, s, noderuntime.OpPullDirect, s.PullDirect(ctx, b.Private.Ref, tt.auth, 3), func(err error) {
				wantReason(t, "PullDirect with "+tt.name, err, failure.Unauthorized, secrets)
			})
			_, err = s.TagDigest(ctx, b.Private.Ref, tt.auth)
			ifCan(t, s, noderuntime.OpRefresh, err, func(err error) {
				wantReason(t, "TagDigest with "+tt.name, err, failure.Unauthorized, secrets)
			})
		}
		if img, err := s.ImageStatus(ctx, b.Private.Ref); err != nil || img != nil {
			t.Errorf("ImageStatus(%s) after refused pulls = %v, %v; want nil, nil", b.Private.Ref, img, err)
		}
		err := s.PullDirect(ctx, b.Private.Ref, b.Auth, 3)
		ifCan(t, s, noderuntime.OpPullDirect, err, func(err error) {
			if err != nil {
				t.Fatalf("PullDirect(%s) with the right credentials: %v", b.Private.Ref, err)
			}
			img := status(t, s, b.Private.Ref)
			if want := repo(t, b.Private.Ref) + "@" + b.Private.Digest; !slices.Equal(img.RepoTags, []string{b.Private.Ref}) || !slices.Equal(img.RepoDigests, []string{want}) {
				t.Errorf("pulled with containerd's client: tags %v digests %v, want [%s] [%s] as a CRI pull", img.RepoTags, img.RepoDigests, b.Private.Ref, want)
			}
		})
		if _, err := s.PullImage(ctx, b.Private.Ref, b.Auth); err != nil {
			t.Fatalf("PullImage(%s) with the right credentials: %v", b.Private.Ref, err)
		}
		if img := status(t, s, b.Private.Ref); img.Id == id {
			t.Errorf("%s and %s have the same ID %s", b.Private.Ref, pub.Ref, id)
		}
		d, err := s.TagDigest(ctx, b.Private.Ref, b.Auth)
		ifCan(t, s, noderuntime.OpRefresh, err, func(err error) {
			if err != nil || d != b.Private.Digest {
				t.Errorf("TagDigest(%s) with the right credentials = %q, %v; want %s", b.Private.Ref, d, err, b.Private.Digest)
			}
		})
	})

	step(t, "Puller, Refresher: a missing image is not found", func(t *testing.T) {
		_, err := s.PullImage(ctx, b.Missing, nil)
		wantReason(t, "PullImage", err, failure.NotFound, nil)
		ifCan(t, s, noderuntime.OpPullDirect, s.PullDirect(ctx, b.Missing, nil, 3), func(err error) {
			wantReason(t, "PullDirect", err, failure.NotFound, nil)
		})
		_, err = s.TagDigest(ctx, b.Missing, nil)
		ifCan(t, s, noderuntime.OpRefresh, err, func(err error) {
			wantReason(t, "TagDigest", err, failure.NotFound, nil)
		})
	})

	step(t, "Refresher, Importer: digest records and tags", func(t *testing.T) {
		d, err := s.TagDigest(ctx, pub.Ref, nil)
		ifCan(t, s, noderuntime.OpRefresh, err, func(err error) {
			if err != nil || d != pub.Digest {
				t.Errorf("TagDigest(%s) = %q, %v; want %s", pub.Ref, d, err, pub.Digest)
			}
		})
		local, checked, err := s.LocalDigest(ctx, pub.Ref)
		ifCan(t, s, noderuntime.OpRefresh, err, func(err error) {
			if err != nil || local != pub.Digest || !checked.IsZero() {
				t.Errorf("LocalDigest(%s) = %q, %v, %v; want %s, never checked", pub.Ref, local, checked, err, pub.Digest)
			}
			at := time.Unix(time.Now().Unix(), 0)
			if err := s.MarkChecked(ctx, pub.Ref, at); err != nil {
				t.Errorf("MarkChecked(%s): %v", pub.Ref, err)
			}
			if _, checked, err := s.LocalDigest(ctx, pub.Ref); err != nil || !checked.Equal(at) {
				t.Errorf("LocalDigest(%s) after MarkChecked(%v): checked %v, %v", pub.Ref, at, checked, err)
			}
			if _, _, err := s.LocalDigest(ctx, b.Missing); err == nil {
				t.Errorf("LocalDigest(%s) of no record: no error", b.Missing)
			}
			if err := s.MarkChecked(ctx, b.Missing, at); err != nil {
				t.Errorf("MarkChecked(%s) of no record: %v, want nil", b.Missing, err)
			}
		})
		ifCan(t, s, noderuntime.OpTag, s.Tag(ctx, alias, pub.Ref), func(err error) {
			if err != nil {
				t.Fatalf("Tag(%s, %s): %v", alias, pub.Ref, err)
			}
			eventually(t, "the tagged name shows as the source's image", func() string {
				img, _ := s.ImageStatus(ctx, alias)
				src, _ := s.ImageStatus(ctx, pub.Ref)
				if img.GetId() != id || !slices.Contains(src.GetRepoTags(), alias) {
					return "ImageStatus(" + alias + ") = " + img.String() + ", of the source " + src.String()
				}
				return ""
			})
			if err := s.Tag(ctx, alias, b.Missing); err == nil {
				t.Errorf("Tag(%s, %s) from no record: no error", alias, b.Missing)
			}
		})
	})

	step(t, "Records: owners", func(t *testing.T) {
		err := s.Own(ctx, ownerA, pub.Ref, false)
		if !ifCan(t, s, noderuntime.OpPrune, err, nil) {
			// Nothing is recorded, so nothing is owned or forgotten.
			if o, err := s.Owned(ctx, ownerA); err != nil || len(o) != 0 {
				t.Errorf("Owned on a runtime that records no owners = %v, %v; want none", o, err)
			}
			if err := s.Disown(ctx, ownerA, pub.Ref); err != nil {
				t.Errorf("Disown on a runtime that records no owners: %v", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Own: %v", err)
		}
		for _, o := range []struct {
			owner, name string
			keep        bool
		}{{ownerB, pub.Ref, true}, {ownerA, b.Missing, false}} {
			if err := s.Own(ctx, o.owner, o.name, o.keep); err != nil {
				t.Errorf("Own(%s, %s): %v", o.owner, o.name, err)
			}
		}
		wantOwned(t, s, ownerA, noderuntime.OwnedImage{Name: pub.Ref, Others: 1})
		wantOwned(t, s, ownerB, noderuntime.OwnedImage{Name: pub.Ref, Keep: true, Others: 1})
		if err := s.Disown(ctx, ownerB, pub.Ref); err != nil {
			t.Errorf("Disown: %v", err)
		}
		if err := s.Disown(ctx, ownerB, b.Missing); err != nil {
			t.Errorf("Disown of no record: %v", err)
		}
		wantOwned(t, s, ownerA, noderuntime.OwnedImage{Name: pub.Ref})
		wantOwned(t, s, ownerB)
	})

	step(t, "Pinner: pins as the kubelet sees them", func(t *testing.T) {
		ch, err := s.SyncPins(ctx, ownerA, []string{pub.Ref, b.Missing}, nil)
		if !ifCan(t, s, noderuntime.OpPin, err, nil) {
			if _, err := s.SyncPins(ctx, ownerA, nil, []string{pub.Ref}); err != nil {
				t.Errorf("SyncPins with nothing to pin: %v, want nil", err)
			}
			return
		}
		wantPins(t, "ownerA pins", ch, err, noderuntime.PinChanges{Pinned: []string{pub.Ref}})
		pinned(t, s, b, pub.Ref, true)
		ch, err = s.SyncPins(ctx, ownerB, []string{pub.Ref}, nil)
		wantPins(t, "ownerB pins too", ch, err, noderuntime.PinChanges{Pinned: []string{pub.Ref}})
		ch, err = s.SyncPins(ctx, ownerA, []string{pub.Ref}, nil)
		wantPins(t, "ownerA again", ch, err, noderuntime.PinChanges{})
		ch, err = s.SyncPins(ctx, ownerA, nil, nil)
		wantPins(t, "ownerA lets go", ch, err, noderuntime.PinChanges{StillPinned: []string{pub.Ref}})
		pinned(t, s, b, pub.Ref, true)
		ch, err = s.SyncPins(ctx, ownerB, nil, []string{b.Private.Ref})
		wantPins(t, "ownerB lets go", ch, err, noderuntime.PinChanges{Unpinned: []string{pub.Ref}})
		pinned(t, s, b, pub.Ref, false)
	})

	step(t, "Records: removal of one name, then of the image", func(t *testing.T) {
		err := s.RemoveName(ctx, alias)
		if ifCan(t, s, noderuntime.OpPrune, err, nil) {
			if err != nil {
				t.Fatalf("RemoveName(%s): %v", alias, err)
			}
			eventually(t, "the name gone, the image under its other names", func() string {
				if img, err := s.ImageStatus(ctx, alias); err != nil || img != nil {
					return "ImageStatus(" + alias + ") = " + img.String()
				}
				if img, _ := s.ImageStatus(ctx, pub.Ref); img.GetId() != id || slices.Contains(img.GetRepoTags(), alias) {
					return "ImageStatus(" + pub.Ref + ") = " + img.String()
				}
				return ""
			})
			if err := s.RemoveName(ctx, b.Missing); err != nil {
				t.Errorf("RemoveName of no record: %v, want nil", err)
			}
		}
		if err := s.RemoveImage(ctx, id); err != nil {
			t.Fatalf("RemoveImage(%s): %v", id, err)
		}
		eventually(t, "the image gone under every name", func() string {
			for _, ref := range []string{pub.Ref, digestRef, id} {
				if img, err := s.ImageStatus(ctx, ref); err != nil || img != nil {
					return "ImageStatus(" + ref + ") = " + img.String()
				}
			}
			return ""
		})
		if o, err := s.Owned(ctx, ownerA); err != nil || len(o) != 0 {
			t.Errorf("Owned(%s) after the image went = %v, %v; want none: the record took its labels", ownerA, o, err)
		}
		if img := status(t, s, b.Private.Ref); img == nil {
			t.Errorf("%s went with %s", b.Private.Ref, pub.Ref)
		}
	})
}

// step runs one part of the contract; a failed step ends the suite.
func step(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		t.FailNow()
	}
}

// repo is ref's repository.
func repo(t *testing.T, ref string) string {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		t.Fatalf("reference %q: %v", ref, err)
	}
	return named.Name()
}

// status is ImageStatus(ref), which must find the image.
func status(t *testing.T, s noderuntime.Presence, ref string) *runtimeapi.Image {
	t.Helper()
	img, err := s.ImageStatus(context.Background(), ref)
	if err != nil || img == nil {
		t.Fatalf("ImageStatus(%s) = %v, %v; want the image", ref, img, err)
	}
	return img
}

func find(listed []*runtimeapi.Image, ref string) *runtimeapi.Image {
	for _, img := range listed {
		if slices.Contains(img.RepoTags, ref) || slices.Contains(img.RepoDigests, ref) {
			return img
		}
	}
	return nil
}

// ifCan checks err of an operation op: if the runtime cannot do op, it
// must be an UnsupportedError for op, and ifCan is false; else it hands
// err to check, if any, and is true.
func ifCan(t *testing.T, s noderuntime.Capable, op noderuntime.Op, err error, check func(error)) bool {
	t.Helper()
	if cannot := s.Can(op); cannot != nil {
		var u *noderuntime.UnsupportedError
		if !errors.As(cannot, &u) || u.Op != op {
			t.Errorf("Can(%s) = %v, want an UnsupportedError for it", op, cannot)
		}
		if !errors.As(err, &u) || u.Op != op {
			t.Errorf("%s on a runtime that cannot: %v, want an UnsupportedError", op, err)
		}
		if got, transient := preload.Classify(err); got != failure.Unsupported || transient {
			t.Errorf("%s on a runtime that cannot: classified %v (transient %v), want %v, final", op, got, transient, failure.Unsupported)
		}
		return false
	}
	if check != nil {
		check(err)
	}
	return true
}

// wantReason checks that err classifies as want, a final reason, and
// shows none of secrets.
func wantReason(t *testing.T, what string, err error, want failure.Reason, secrets []string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want %s", what, want)
		return
	}
	// Both reasons the suite expects are final: retrying cannot mend them.
	got, transient := preload.Classify(err)
	if got != want || transient {
		t.Errorf("%s: classified %q (transient %v), want %q, final: %v", what, got, transient, want, err)
	}
	t.Logf("%s: %s: %v", what, got, err)
	for _, secret := range secrets {
		if secret != "" && strings.Contains(err.Error(), secret) {
			t.Errorf("%s: the error shows a password: %v", what, err)
		}
	}
}

func wantOwned(t *testing.T, s noderuntime.Records, owner string, want ...noderuntime.OwnedImage) {
	t.Helper()
	got, err := s.Owned(context.Background(), owner)
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("Owned(%s) = %+v, %v; want %+v", owner, got, err, want)
	}
}

func wantPins(t *testing.T, what string, got noderuntime.PinChanges, err error, want noderuntime.PinChanges) {
	t.Helper()
	if err != nil || !slices.Equal(got.Pinned, want.Pinned) || !slices.Equal(got.Unpinned, want.Unpinned) || !slices.Equal(got.StillPinned, want.StillPinned) {
		t.Errorf("%s: SyncPins = %+v, %v; want %+v", what, got, err, want)
	}
}

// pinned checks ImageStatus(ref).Pinned and ListImages against on, where
// the runtime reports pins; where it does not, that it reports none.
func pinned(t *testing.T, s noderuntime.Presence, b Backend, ref string, on bool) {
	t.Helper()
	want := on && b.PinsReported
	eventually(t, fmt.Sprintf("pinned shown as %v", want), func() string {
		img, err := s.ImageStatus(context.Background(), ref)
		if err != nil {
			return "ImageStatus: " + err.Error()
		}
		listed, err := s.ListImages(context.Background())
		if err != nil {
			return "ListImages: " + err.Error()
		}
		l := find(listed, ref)
		if img == nil || img.Pinned != want || l == nil || l.Pinned != want {
			return "ImageStatus " + img.String() + "; ListImages " + l.String()
		}
		return ""
	})
}

// eventually waits up to visible for check to report nothing.
func eventually(t *testing.T, what string, check func() string) {
	t.Helper()
	deadline := time.Now().Add(visible)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after %v: %s", what, visible, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
