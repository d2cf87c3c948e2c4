#!/usr/bin/env bash
# Release artifacts for the kubectl plugin: kubectl finds plugins on PATH by
# the name kubectl-<name>, so each archive holds the preloader binary named
# kubectl-preload, and a krew manifest names each archive and its sha256.
#
#   VERSION=v0.1.0 scripts/release.sh
#
# VERSION            release tag (default: git describe); krew needs semver
# PLATFORMS          os/arch list (default: linux and darwin, amd64 and arm64)
# OUT                output directory (default: the repository's dist)
# RELEASE_URL        where the archives will be downloaded from
# SOURCE_DATE_EPOCH  mtime inside the archives (default: HEAD's commit time)
set -euo pipefail

# A relative OUT is the caller's; the default, dist, is the repository's.
[[ -z ${OUT:-} || $OUT == /* ]] || OUT=$PWD/$OUT
cd "$(dirname "$0")/.."
GO=${GO:-go}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
PLATFORMS=${PLATFORMS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64}
OUT=${OUT:-dist}
RELEASE_URL=${RELEASE_URL:-https://github.com/kube-preloader/kube-preloader/releases/download/$VERSION}
# The same commit and Go give byte-identical archives: anyone can check the sums.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

# krew refuses a manifest whose spec.version is not vMAJOR.MINOR.PATCH[-pre]:
# fail here, before minutes of builds, rather than at `krew install`.
if ! [[ $VERSION =~ ^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$ ]]; then
	echo "release: VERSION=$VERSION is not a semver tag (krew needs one): tag the release or pass VERSION=v0.1.0" >&2
	exit 2
fi

mkdir -p "$OUT/krew"
OUT=$(cd "$OUT" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

manifest=$work/preload.yaml
cat >"$manifest" <<EOF
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: preload
spec:
  version: $VERSION
  homepage: https://github.com/kube-preloader/kube-preloader
  shortDescription: Keep container images present on nodes
  description: |
    Shows, node by node, which images the kube-preloader agent keeps present
    in each node's container runtime (checked the way the kubelet checks,
    with CRI ImageStatus), and pre-warms an image on every node before a
    rollout, so pods with imagePullPolicy Never or IfNotPresent start even
    when the registry is private or unreachable:

      kubectl preload status
      kubectl preload warm --configmap NS/NAME --image REF --wait
  caveats: |
    status and warm work with the kube-preloader agent: install its
    DaemonSet first (kustomize base github.com/kube-preloader/kube-preloader/manifests,
    see docs/install/kustomize.md).
  platforms:
EOF

archives=()
for p in $PLATFORMS; do
	os=${p%/*} arch=${p#*/}
	name=kube-preloader_${VERSION}_${os}_${arch}.tar.gz
	stage=$work/$os-$arch
	mkdir -p "$stage"
	echo "release: building $os/$arch" >&2
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch "$GO" build -trimpath \
		-ldflags "-s -w -X main.version=$VERSION" -o "$stage/kubectl-preload" ./cmd/preloader
	files=(kubectl-preload)
	if [[ -f LICENSE ]]; then cp LICENSE "$stage/" && files+=(LICENSE); fi
	# Reproducible: fixed order, mtime, owner and mode (whatever the umask);
	# gzip -n leaves out its own file name and time.
	tar -C "$stage" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 \
		--numeric-owner --mode=u=rwX,go=rX --format=ustar -cf - "${files[@]}" | gzip -n >"$OUT/$name"
	sum=$(sha256sum "$OUT/$name" | cut -d' ' -f1)
	archives+=("$name")
	cat >>"$manifest" <<EOF
  - selector:
      matchLabels:
        os: $os
        arch: $arch
    uri: $RELEASE_URL/$name
    sha256: $sum
    bin: kubectl-preload
    files:
EOF
	for f in "${files[@]}"; do
		printf '    - from: %s\n      to: .\n' "$f" >>"$manifest"
	done
done

# Only this run's archives: a stale one left in OUT is not vouched for.
(cd "$OUT" && sha256sum "${archives[@]}") >"$OUT/SHA256SUMS"
mv "$manifest" "$OUT/krew/preload.yaml"
echo "release: $OUT/SHA256SUMS $OUT/krew/preload.yaml" >&2
