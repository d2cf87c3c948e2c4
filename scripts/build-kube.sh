#!/usr/bin/env bash
# Builds kube-apiserver (and, with arguments, other Kubernetes binaries) from
# the Go module proxy into a cache outside the repo. k8s.io/kubernetes is not
# meant to be a dependency, so it is built from a throwaway module whose
# replace lines map every staging module to the matching v0 release.
# Usage: scripts/build-kube.sh [kube-apiserver kubelet kube-controller-manager kube-scheduler kubectl]
set -euo pipefail

CACHE="${PRELOADER_CACHE:-$HOME/.cache/kube-preloader}"
KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
STAGING_VERSION="v0${KUBE_VERSION#v1}"
bins=("$@")
((${#bins[@]})) || bins=(kube-apiserver)

mkdir -p "$CACHE/bin"
todo=()
for b in "${bins[@]}"; do
  [[ -x "$CACHE/bin/$b-$KUBE_VERSION" ]] || todo+=("$b")
done
((${#todo[@]})) || exit 0

mod="$CACHE/kube-build-$KUBE_VERSION"
mkdir -p "$mod"
cd "$mod"
if [[ ! -f go.mod ]]; then
  staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
    cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
    kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
    mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller
    streaming)
  {
    echo "module kubebuild"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    for s in "${staging[@]}"; do echo "	k8s.io/$s => k8s.io/$s $STAGING_VERSION"; done
    echo ")"
  } > go.mod
fi
# Every binary this script builds, so that go mod tidy records their modules
# (rewritten each time: a module made by an older version lacks kubectl).
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
# Staging modules that do not exist at this version make go mod tidy fail;
# drop them and retry.
for _ in 1 2 3 4 5; do
  if out=$(GOFLAGS=-mod=mod go mod tidy 2>&1); then break; fi
  bad=$(grep -oE 'k8s.io/[a-z-]+@'"$STAGING_VERSION"': (reading|invalid|unknown)' <<<"$out" | sed 's/@.*//' | sort -u)
  [[ -n "$bad" ]] || { echo "$out" >&2; exit 1; }
  for m in $bad; do sed -i "\#	$m => #d" go.mod; done
done
for b in "${todo[@]}"; do
  echo "build-kube: building $b $KUBE_VERSION" >&2
  CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$CACHE/bin/$b-$KUBE_VERSION.tmp" "k8s.io/kubernetes/cmd/$b"
  mv "$CACHE/bin/$b-$KUBE_VERSION.tmp" "$CACHE/bin/$b-$KUBE_VERSION"
done
