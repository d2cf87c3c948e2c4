# syntax=docker/dockerfile:1
# The preloader agent image. `make image IMAGE=REF` builds the same content
# without a Docker daemon (scripts/imagebuild) as one OCI index for
# linux/amd64 and linux/arm64: keep the two in step. The buildx equivalent:
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=... --build-arg REVISION=... --build-arg CREATED=... .
#
# The final image is scratch: the static binary and a CA bundle (pullVia
# containerd fetches from registries in-process). It runs as root because
# the DaemonSet must open the root-owned CRI socket; manifests/daemonset.yaml
# drops every capability and makes the root filesystem read-only.

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o /out/preloader ./cmd/preloader

FROM scratch
ARG VERSION=dev
ARG REVISION=
ARG CREATED=1970-01-01T00:00:00Z
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/preloader /preloader
LABEL org.opencontainers.image.title="preloader" \
      org.opencontainers.image.description="kube-preloader node agent: makes container images present on Kubernetes nodes through the CRI" \
      org.opencontainers.image.source="https://github.com/kube-preloader/kube-preloader" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION" \
      org.opencontainers.image.created="$CREATED"
ENTRYPOINT ["/preloader"]
