#!/usr/bin/env bash
# Builds kube-apiserver (and, with arguments, other Kubernetes binaries) from
# the Go module proxy into a cache outside the repo. k8s.io/kubernetes is not
# meant to be a dependency, so it is built from a throwaway module whose
# replace lines map every staging module to the matching v0 release.
# gcp-credential-provider is the kubelet's own e2e credential provider
# plugin (test/e2e_node/plugins), which the credential provider tests run.
# Usage: scripts/build-kube.sh [kube-apiserver kubelet kube-controller-manager kube-scheduler kubectl gcp-credential-provider]
set -euo pipefail

CACHE="${PRELOADER_CACHE:-$HOME/.cache/kube-preloader}"
KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
STAGING_VERSION="v0${KUBE_VERSION#v1}"
bins=("$@")
((${#bins[@]})) || bins=(kube-apiserver)

mkdir -p "$CACHE/bin"
todo=()
# A binary that does not report its release (older builds of this script
# said v0.0.0-master, which fails Helm's kubeVersion checks and the
# kubelet's version-dependent defaults) is built again; only its link
# step reruns when the Go build cache is warm.
reports_version() {
  local out
  # The test plugin has no version flag; the file name carries it.
  [[ "$1" == gcp-credential-provider ]] && return 0
  if [[ "$1" == kubectl ]]; then
    out=$("$CACHE/bin/$1-$KUBE_VERSION" version --client 2>/dev/null) || return 1
  else
    out=$("$CACHE/bin/$1-$KUBE_VERSION" --version 2>/dev/null) || return 1
  fi
  [[ "$out" == *"$KUBE_VERSION"* ]]
}
for b in "${bins[@]}"; do
  [[ -x "$CACHE/bin/$b-$KUBE_VERSION" ]] && reports_version "$b" || todo+=("$b")
done
((${#todo[@]})) || exit 0

mod="$CACHE/kube-build-$KUBE_VERSION"
mkdir -p "$mod"
cd "$mod"
if [[ ! -f go.mod ]]; then
  # The staging modules are the ones this version's own go.mod replaces with
  # ./staging/src/k8s.io/<name> (1.37 added cri-streaming); each maps to the
  # v0 release of the same number.
  kmod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
  [[ -f "$kmod" ]] || { echo "build-kube: cannot download k8s.io/kubernetes@$KUBE_VERSION" >&2; exit 1; }
  mapfile -t staging < <(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$kmod")
  ((${#staging[@]})) || { echo "build-kube: no staging modules in $kmod" >&2; exit 1; }
  goversion=$(sed -n 's/^go //p' "$kmod")
  {
    echo "module kubebuild"
    echo
    echo "go ${goversion:-1.24}"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    for s in "${staging[@]}"; do echo "	$s => $s $STAGING_VERSION"; done
    echo ")"
  } > go.mod.tmp
  mv go.mod.tmp go.mod
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
	_ "k8s.io/kubernetes/test/e2e_node/plugins/gcp-credential-provider"
)
GO
GOFLAGS=-mod=mod go mod tidy
# What hack/lib/version.sh stamps into a release build.
minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
ldversion=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldversion+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
for b in "${todo[@]}"; do
  echo "build-kube: building $b $KUBE_VERSION" >&2
  pkg="k8s.io/kubernetes/cmd/$b"
  [[ "$b" == gcp-credential-provider ]] && pkg="k8s.io/kubernetes/test/e2e_node/plugins/$b"
  # Static (CGO_ENABLED=0) like every binary here: a plugin must run in
  # the agent's image, which has no libc.
  CGO_ENABLED=0 go build -trimpath -ldflags="-s -w $ldversion" -o "$CACHE/bin/$b-$KUBE_VERSION.tmp" "$pkg"
  mv "$CACHE/bin/$b-$KUBE_VERSION.tmp" "$CACHE/bin/$b-$KUBE_VERSION"
done
