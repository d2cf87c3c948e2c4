package preload

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/distribution/reference"
	digest "github.com/opencontainers/go-digest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kube-preloader/kube-preloader/archive"
	"github.com/kube-preloader/kube-preloader/failure"
	"github.com/kube-preloader/kube-preloader/noderuntime"
	"github.com/kube-preloader/kube-preloader/preload/config"
	"github.com/kube-preloader/kube-preloader/signature"
)

// SignatureError is an image verify refuses: no valid signature by one of
// the keys, or keys that could not be read. Retrying cannot mend it.
type SignatureError struct {
	Image string
	Err   error
}

func (e *SignatureError) Error() string {
	return fmt.Sprintf("verify %s: %v", e.Image, e.Err)
}

func (e *SignatureError) Unwrap() error { return e.Err }

func (e *SignatureError) Reason() failure.Reason { return failure.Signature }

// verification is the keys of one run's verify, read when the run
// starts; err says why they could not be read, and fails every image the
// run would verify.
type verification struct {
	keys *signature.Keys
	err  error
}

type verifyKey struct{}

// withVerification reads cfg's verify keys into ctx; a ctx without them
// verifies nothing.
func withVerification(ctx context.Context, cfg *config.Config) context.Context {
	if !cfg.Verify.On() {
		return ctx
	}
	keys, err := signature.LoadKeys(cfg.Verify.Keys...)
	return context.WithValue(ctx, verifyKey{}, &verification{keys: keys, err: err})
}

func verificationFrom(ctx context.Context) *verification {
	v, _ := ctx.Value(verifyKey{}).(*verification)
	return v
}

// check verifies d's signatures.
func (v *verification) check(image string, d digest.Digest, sigs []signature.Signature) error {
	if v.err != nil {
		return &SignatureError{Image: image, Err: v.err}
	}
	if err := v.keys.Verify(d, sigs); err != nil {
		return &SignatureError{Image: image, Err: err}
	}
	return nil
}

// verifyArchived keeps of imgs those with a valid signature the archive
// carries for the digest its index.json entry records (an index for a
// multi-platform image), and reports each other named one through fail.
// Unnamed images are kept: the import reports them as it does without
// verify.
func (e *Engine) verifyArchived(ctx context.Context, path string, contents *archive.Contents, imgs []archive.Image, fail func(name string, err error)) []archive.Image {
	v := verificationFrom(ctx)
	if v == nil {
		return imgs
	}
	start := time.Now()
	var kept []archive.Image
	defer func() {
		e.log().Info("signatures checked", "archive", path, "images", len(imgs), "valid", len(kept), "seconds", time.Since(start).Seconds())
	}()
	for _, img := range imgs {
		if len(img.Names) == 0 {
			kept = append(kept, img)
			continue
		}
		err := v.check(img.Names[0], img.Target.Digest, nil)
		if v.err == nil {
			var sigs []signature.Signature
			var unreadable []error
			for _, sg := range contents.Signatures[img.Target.Digest] {
				s, err := signature.FromManifest(ctx, sg.Manifest, sg.Fetch)
				if err != nil {
					unreadable = append(unreadable, fmt.Errorf("%s: %w", sg.Name, err))
					continue
				}
				sigs = append(sigs, s...)
			}
			err = v.check(img.Names[0], img.Target.Digest, sigs)
			if err != nil && len(unreadable) > 0 {
				err = &SignatureError{Image: img.Names[0], Err: errors.Join(append([]error{errors.Unwrap(err)}, unreadable...)...)}
			}
		}
		if err == nil {
			kept = append(kept, img)
			continue
		}
		for _, n := range img.Names {
			fail(n, fmt.Errorf("archive %s: %w", path, err))
		}
	}
	return kept
}

// pullSigned is a pull of ref under verify: the digest ref names (the
// registry's answer for a tag), its signatures from the repository pulled
// from, checked offline; then that digest is pulled and ref recorded on
// it, so that what the node records under ref is what was verified.
func (e *Engine) pullSigned(ctx context.Context, cfg *config.Config, v *verification, ref string, auth *runtimeapi.AuthConfig) error {
	if err := e.signatures().Can(noderuntime.OpVerify); err != nil {
		return err
	}
	if v.err != nil {
		return &SignatureError{Image: ref, Err: v.err}
	}
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return err
	}
	var d digest.Digest
	if digested, ok := named.(reference.Digested); ok {
		d = digested.Digest()
	} else {
		s, err := e.refresher().TagDigest(ctx, ref, auth)
		if err != nil {
			return err
		}
		if d, err = digest.Parse(s); err != nil {
			return fmt.Errorf("resolve %s: %w", ref, err)
		}
	}
	sigs, err := e.signatures().Signatures(ctx, ref, d, auth)
	if err != nil {
		return fmt.Errorf("signatures of %s: %w", ref, err)
	}
	if err := v.check(ref, d, sigs); err != nil {
		return err
	}
	pinned, err := reference.WithDigest(reference.TrimNamed(named), d)
	if err != nil {
		return err
	}
	if err := e.pullRef(ctx, cfg, ref, pinned.String(), auth); err != nil {
		return err
	}
	if pinned.String() == named.String() {
		return nil
	}
	if err := e.importer().Tag(ctx, ref, pinned.String()); err != nil {
		return err
	}
	e.log().Info("verified and recorded", "image", ref, "digest", d)
	return e.awaitCRI(ctx, ref, "")
}
