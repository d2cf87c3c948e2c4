#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian 12 machine:
# Debian packages (containerd 1.6, the distribution registry, etcd, runc,
# conmon, CNI plugins, prometheus and its promtool for the metrics tests,
# skopeo for the image builder's test) when missing, and containerd 2.x,
# CRI-O, helm 4 (the chart's tests and the e2e's install), helm-docs (the
# chart's README), ecr-credential-provider (the credential provider
# tests), oras (the OCI artifact tests) and cosign (the signature tests) built from the Go module proxy
# into a cache outside the repo. With the argument "demo", only what
# `make demo` runs: the registry and Debian's containerd packages, and
# containerd 2.x too with "containerd2". With
# "ctr", also ctr 2.x, the peer of the archive import benchmark; with
# "crictl", crictl, the peer of the pull benchmark.
# Usage: scripts/install-deps.sh [demo [containerd2]] [ctr] [crictl]
set -euo pipefail

CACHE="${PRELOADER_CACHE:-$HOME/.cache/kube-preloader}"
CONTAINERD2_VERSION="${CONTAINERD2_VERSION:-v2.4.2}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.37.0}"
HELM_VERSION="${HELM_VERSION:-v4.3.1}"
want_demo= want_containerd2=1 want_ctr= want_crictl=
for a in "$@"; do
  case "$a" in
    demo) want_demo=1 want_containerd2= ;;
    containerd2) want_containerd2=1 ;;
    ctr) want_ctr=1 ;;
    crictl) want_crictl=1 ;;
    *) echo "usage: scripts/install-deps.sh [demo [containerd2]] [ctr] [crictl]" >&2; exit 2 ;;
  esac
done

pkgs=(containerd docker-registry etcd-server runc conmon containernetworking-plugins apache2-utils iproute2 zstd prometheus skopeo)
if [[ -n "$want_demo" ]]; then
  # The demo only pulls: containerd needs no runc or CNI plugin for that.
  pkgs=(docker-registry containerd)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: apt-get install ${missing[*]} (once)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The packages ship services; this machine has no init to start them and the
  # tests start their own instances.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The registry package may start its service on :5000; the tests run their
  # own registries on ephemeral ports. Only the packaged service is stopped,
  # never a registry a running test started.
  pkill -f '^/usr/bin/docker-registry serve /etc/docker/registry/config.yml' 2>/dev/null || true
fi

mkdir -p "$CACHE/bin"
if [[ -n "$want_containerd2" && ! -x "$CACHE/bin/containerd-$CONTAINERD2_VERSION" ]]; then
  echo "install-deps: building containerd $CONTAINERD2_VERSION and its shim into $CACHE/bin (once, ~4-7 min on 2 cores with an empty Go cache)…" >&2
  start=$SECONDS
  tmp=$(mktemp -d)
  GOBIN="$tmp" go install "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD2_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD2_VERSION"
  mv "$tmp/containerd-shim-runc-v2" "$CACHE/bin/containerd-shim-runc-v2-$CONTAINERD2_VERSION"
  mv "$tmp/containerd" "$CACHE/bin/containerd-$CONTAINERD2_VERSION"
  rm -rf "$tmp"
  echo "install-deps: containerd $CONTAINERD2_VERSION built in $((SECONDS - start)) s" >&2
fi
if [[ -z "$want_demo" && ! -x "$CACHE/bin/helm-$HELM_VERSION" ]]; then
  echo "install-deps: building helm $HELM_VERSION into $CACHE/bin (once; about 2 min on 2 cores with a cold Go cache)" >&2
  tmp=$(mktemp -d)
  GOBIN="$tmp" go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
  mv "$tmp/helm" "$CACHE/bin/helm-$HELM_VERSION"
  rm -rf "$tmp"
fi
# helm-docs, which makes the chart's README (make docs; checked by the
# chart's tests), at the version tools/go.mod requires: built from that
# separate module, so it never enters the product's go.mod.
tools_dir="$(cd "$(dirname "$0")/../tools" && pwd)"
HELM_DOCS_VERSION=$(awk '$1 == "github.com/norwoodj/helm-docs" {print $2}' "$tools_dir/go.mod")
if [[ -z "$want_demo" && ! -x "$CACHE/bin/helm-docs-$HELM_DOCS_VERSION" ]]; then
  echo "install-deps: building helm-docs $HELM_DOCS_VERSION into $CACHE/bin (once; about 2 min on 2 cores with a cold Go cache)" >&2
  tmp=$(mktemp -d)
  (cd "$tools_dir" && go build -o "$tmp/helm-docs" github.com/norwoodj/helm-docs/cmd/helm-docs)
  mv "$tmp/helm-docs" "$CACHE/bin/helm-docs-$HELM_DOCS_VERSION"
  rm -rf "$tmp"
fi
# ecr-credential-provider, the real credential provider plugin the
# integration tests run `once` against, at the version
# tools/credproviders/go.mod requires; static (CGO_ENABLED=0), as the
# agent's image has no libc.
ECR_PROVIDER_VERSION=$(awk '$1 == "k8s.io/cloud-provider-aws" {print $2}' "$tools_dir/credproviders/go.mod")
if [[ -z "$want_demo" && ! -x "$CACHE/bin/ecr-credential-provider-$ECR_PROVIDER_VERSION" ]]; then
  echo "install-deps: building ecr-credential-provider $ECR_PROVIDER_VERSION into $CACHE/bin (once; about 3 min on 2 cores with a cold Go cache)" >&2
  tmp=$(mktemp -d)
  (cd "$tools_dir/credproviders" && CGO_ENABLED=0 go build -trimpath -o "$tmp/ecr-credential-provider" k8s.io/cloud-provider-aws/cmd/ecr-credential-provider)
  mv "$tmp/ecr-credential-provider" "$CACHE/bin/ecr-credential-provider-$ECR_PROVIDER_VERSION"
  rm -rf "$tmp"
fi
# The ORAS CLI, which pushes the OCI artifacts (empty and custom configs,
# artifactType) the integration tests preload, at the version
# tools/oras/go.mod requires.
ORAS_VERSION=$(awk '$1 == "oras.land/oras" {print $2}' "$tools_dir/oras/go.mod")
if [[ -z "$want_demo" && ! -x "$CACHE/bin/oras-$ORAS_VERSION" ]]; then
  echo "install-deps: building oras $ORAS_VERSION into $CACHE/bin (once; about 4 min on 2 cores with a cold Go cache)" >&2
  start=$SECONDS
  tmp=$(mktemp -d)
  (cd "$tools_dir/oras" && CGO_ENABLED=0 go build -trimpath -o "$tmp/oras" oras.land/oras/cmd/oras)
  mv "$tmp/oras" "$CACHE/bin/oras-$ORAS_VERSION"
  rm -rf "$tmp"
  echo "install-deps: oras $ORAS_VERSION built in $((SECONDS - start)) s" >&2
fi
# cosign, which signs the images of the signature tests (key pair, no
# transparency log), at the version tools/cosign/go.mod requires.
COSIGN_VERSION=$(awk '$1 == "github.com/sigstore/cosign/v2" {print $2}' "$tools_dir/cosign/go.mod")
if [[ -z "$want_demo" && ! -x "$CACHE/bin/cosign-$COSIGN_VERSION" ]]; then
  echo "install-deps: building cosign $COSIGN_VERSION into $CACHE/bin (once; about 13 min on 2 cores with a cold Go cache)" >&2
  start=$SECONDS
  tmp=$(mktemp -d)
  (cd "$tools_dir/cosign" && CGO_ENABLED=0 go build -trimpath -o "$tmp/cosign" github.com/sigstore/cosign/v2/cmd/cosign)
  mv "$tmp/cosign" "$CACHE/bin/cosign-$COSIGN_VERSION"
  rm -rf "$tmp"
  echo "install-deps: cosign $COSIGN_VERSION built in $((SECONDS - start)) s" >&2
fi
# CRI-O and its pinns, the CRI-only runtime the integration tests run the
# preloader on, at the version tools/crio/go.mod requires: the proxy lists
# no versions of it, so `go install …@version` is refused and it builds from
# that separate module. pinns is C inside CRI-O's module, whose copy in the
# module cache is read-only: it builds from a copy. Debian's conmon and runc
# run its containers (Debian's crun is too old for its runtime spec).
CRIO_VERSION=$(awk '$1 == "github.com/cri-o/cri-o" {print $2}' "$tools_dir/crio/go.mod")
if [[ -z "$want_demo" && ! -x "$CACHE/bin/crio-$CRIO_VERSION" ]]; then
  echo "install-deps: building CRI-O $CRIO_VERSION and pinns into $CACHE/bin (once; about 10 min on 2 cores with a cold Go cache)" >&2
  start=$SECONDS
  tmp=$(mktemp -d)
  (cd "$tools_dir/crio" && go build -trimpath -tags 'containers_image_openpgp exclude_graphdriver_btrfs' \
    -o "$tmp/crio" github.com/cri-o/cri-o/cmd/crio)
  src=$(cd "$tools_dir/crio" && go list -m -f '{{.Dir}}' github.com/cri-o/cri-o)
  cp -r "$src/pinns" "$tmp/pinns"
  chmod -R u+w "$tmp/pinns"
  make -s -C "$tmp/pinns" >&2
  mv "$tmp/bin/pinns" "$CACHE/bin/pinns-$CRIO_VERSION"
  mv "$tmp/crio" "$CACHE/bin/crio-$CRIO_VERSION"
  rm -rf "$tmp"
  echo "install-deps: CRI-O $CRIO_VERSION built in $((SECONDS - start)) s" >&2
fi
# Karpenter's API module, whose NodePool CRD the integration tests install
# to check the docs' example, at the version tools/karpenter/go.mod
# requires: nothing builds, the tests read the CRD from the module cache
# (a 2.3 MB download).
if [[ -z "$want_demo" ]]; then
  (cd "$tools_dir/karpenter" && GOWORK=off go mod download sigs.k8s.io/karpenter)
fi
# ctr 2.x, the peer the archive import benchmark compares against on
# containerd 2.x (Debian's ctr is 1.6).
if [[ -n "$want_ctr" && ! -x "$CACHE/bin/ctr-$CONTAINERD2_VERSION" ]]; then
  echo "install-deps: building ctr $CONTAINERD2_VERSION" >&2
  tmp=$(mktemp -d)
  GOBIN="$tmp" go install "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD2_VERSION"
  mv "$tmp/ctr" "$CACHE/bin/ctr-$CONTAINERD2_VERSION"
  rm -rf "$tmp"
fi
# crictl, the peer the pull benchmark compares against: `crictl pull` of
# each image in turn.
if [[ -n "$want_crictl" && ! -x "$CACHE/bin/crictl-$CRICTL_VERSION" ]]; then
  echo "install-deps: building crictl $CRICTL_VERSION" >&2
  tmp=$(mktemp -d)
  GOBIN="$tmp" go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  mv "$tmp/crictl" "$CACHE/bin/crictl-$CRICTL_VERSION"
  rm -rf "$tmp"
fi
