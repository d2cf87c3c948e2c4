# syntax=docker/dockerfile:1
# The preloader agent image. `make image IMAGE=REF` builds the same content
# without a Docker daemon (scripts/imagebuild): keep the two in step.
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
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/preloader /preloader
LABEL org.opencontainers.image.title="preloader" \
      org.opencontainers.image.description="kube-preloader node agent: makes container images present on Kubernetes nodes through the CRI" \
      org.opencontainers.image.source="https://github.com/kube-preloader/kube-preloader" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION"
ENTRYPOINT ["/preloader"]
