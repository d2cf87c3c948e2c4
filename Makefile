# kube-preloader. `make demo` runs it on a local sandbox; `make test` proves it.
GO        ?= go
BIN       := bin/preloader
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
GOTEST    := $(GO) test -count=1

.PHONY: all build deps runtime-deps test unit integration docs demo bench fuzz image chart chart-push e2e soak scale api-load test-faults clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/preloader

# Debian packages, containerd 2.x and the Kubernetes binaries of the test
# matrix: the newest supported release (API server, controller-manager,
# scheduler, kubectl, kubelet and the kubelet's e2e credential provider
# plugin) and the oldest supported kubelet, each only when missing; builds
# are cached in ~/.cache/kube-preloader.
KUBE_VERSION        ?= v1.37.2
OLDEST_KUBELET      ?= v1.35.4
deps: runtime-deps
	KUBE_VERSION=$(KUBE_VERSION) scripts/build-kube.sh kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl gcp-credential-provider
	KUBE_VERSION=$(OLDEST_KUBELET) scripts/build-kube.sh kubelet

# What the tests run besides Kubernetes: Debian packages, containerd 2.x, helm.
runtime-deps:
	scripts/install-deps.sh

# Unit and integration tests. Integration tests start real containerd
# (1.6 and 2.x), registries and kube-apiserver; with CI=true a missing
# prerequisite fails them instead of skipping.
test: deps
	$(GOTEST) -timeout 40m -p 2 ./...

unit:
	$(GOTEST) -short ./cmd/... ./cri/... ./credprovider/... ./failure/... ./preload/... ./agent/... ./archive/... ./artifact/... ./containerd/... ./bundle/... ./kubelet/... ./nodestatus/... ./noderuntime/... ./kubeapi/... ./warm/... ./waves/... ./workloads/... ./controller/... ./yamlpos/... ./signature/... ./docs/...

integration: deps
	$(GOTEST) -timeout 40m -p 2 ./integration/...

# The generated docs: the chart's README from README.md.gotmpl and the
# comments of values.yaml (helm-docs, pinned in the tools module), and
# docs/reference/cli.md from the commands. Tests fail when either is stale.
docs:
	cd tools && $(GO) tool helm-docs --chart-search-root ../charts/kube-preloader --skip-version-footer --log-level warning
	$(GO) test -count=1 ./cmd/preloader -run '^TestCLIDoc$$' -update

# manifests/ from the chart, for kubectl apply -k: base/ is helm template
# with the chart's defaults (kubeadm's layout), overlays/D what
# distribution: D changes, as patches kustomize applies; every overlay is
# built with kubectl kustomize and compared with the chart before anything
# is written. TestManifestsRendered fails when manifests/ is stale.
KUBECTL ?= $(shell command -v kubectl 2>/dev/null || echo $(HOME)/.cache/kube-preloader/bin/kubectl-$(KUBE_VERSION))
.PHONY: manifests
manifests:
	$(GO) run ./scripts/manifests -helm $(HELM) -kubectl $(KUBECTL)

# Only what the demo runs: the registry and containerd, while the preloader
# and the sandbox program (which leaves out the test harness's Kubernetes
# clients) build with the same flags, so that they share the Go build
# cache. DEMO_CONTAINERD: auto (containerd 2.x when the cache has it, as
# after make test, else Debian's 1.6, which needs no build), 1.6, or 2
# (built once into the cache, about 4 CPU-minutes).
DEMO_CONTAINERD ?= auto
demo:
	@scripts/install-deps.sh demo $(if $(filter 2,$(DEMO_CONTAINERD)),containerd2) & deps=$$!; \
	echo "demo: building $(BIN) and bin/sandbox (first time ~2 min on 2 cores, then ~2 s)…" >&2; \
	start=$$(date +%s); \
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/preloader ./scripts/sandbox && \
	echo "demo: built $(BIN) and bin/sandbox in $$(($$(date +%s) - start)) s" >&2; built=$$?; \
	wait $$deps && exit $$built
	@bin/sandbox --containerd $(DEMO_CONTAINERD) $(BIN)

bench: deps build
	scripts/install-deps.sh ctr crictl
	PRELOADER_BIN=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./integration/bench/

FUZZTIME ?= 1m
# Every fuzz target for FUZZTIME each. Archive inputs are large: minimizing
# each new one for the default 60 s would take most of a short run.
fuzz:
	$(GO) test ./preload/config -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME)
	$(GO) test ./preload/config -run '^$$' -fuzz '^FuzzNormalizeRef$$' -fuzztime $(FUZZTIME)
	$(GO) test ./cri/keyring -run '^$$' -fuzz '^FuzzParseDockerConfig$$' -fuzztime $(FUZZTIME)
	$(GO) test ./archive -run '^$$' -fuzz '^FuzzArchive$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 5s

SOAK         ?= 10m
SOAK_TIMEOUT ?= 2h
# The agent for SOAK against a registry that fails and heals every 20 s
# (503, dropped connections, stalls) while its ConfigMap changes every 3 s
# and images vanish from the runtime: prints RSS and goroutines every 10 s,
# fails if they grow or if the end state is not the last config's. Too long
# for make test; `make soak SOAK=2m` for a quick run.
soak: deps
	PRELOADER_SOAK=$(SOAK) $(GOTEST) -run '^TestSoak$$' -v -timeout $(SOAK_TIMEOUT) ./integration/soak/

SCALE_NODES   ?= 20
SCALE_TIMEOUT ?= 30m
# SCALE_NODES agents, each with its own containerd 2.x, against one
# kube-apiserver and one registry behind a byte-counting proxy: without
# waves, with rollout.maxNodesPulling 5, and through a pull-through mirror
# with firstNodes 1 (and, for comparison, without); then status and
# warm --wait against 1000 plain Nodes. Prints the tables of
# docs/development/scale.md. Not part of make test: N containerd and N agents at once.
scale: deps
	PRELOADER_SCALE=$(SCALE_NODES) $(GOTEST) -run '^TestScale' -v -timeout $(SCALE_TIMEOUT) ./integration/scale/

LOAD_NODES  ?= 5
LOAD_WINDOW ?= 10m
# LOAD_NODES agents and preloader controller at rest, behind a proxy that
# counts the API requests of each, for LOAD_WINDOW with 10 and with 200
# selected workloads: the figures of docs/operations/large-clusters.md.
api-load: deps
	PRELOADER_LOAD_NODES=$(LOAD_NODES) PRELOADER_LOAD_WINDOW=$(LOAD_WINDOW) $(GOTEST) -run '^TestAPILoadAtRest$$' -v -timeout 60m ./integration/scale/

# The fault suite verbose, with its table for
# docs/development/reliability.md, then the soak.
test-faults: deps
	$(GOTEST) -run '^TestFault' -v -timeout 40m ./integration/
	$(MAKE) --no-print-directory soak

# The agent's container image, built by scripts/imagebuild (its only
# recipe: there is no Dockerfile) and pushed without a Docker daemon (plain
# HTTP for loopback registries) as one OCI index of PLATFORMS. Its times
# are SOURCE_DATE_EPOCH, else the commit's, so the same commit and VERSION
# push the same digest.
PLATFORMS ?= linux/amd64,linux/arm64
image:
	@test -n "$(IMAGE)" || { echo "usage: make image IMAGE=REF [PLATFORMS=linux/amd64]" >&2; exit 2; }
	SOURCE_DATE_EPOCH="$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null)}" \
	$(GO) run ./scripts/imagebuild --image $(IMAGE) --platforms $(PLATFORMS) --version $(VERSION) \
		--revision "$$(git rev-parse HEAD 2>/dev/null)" --ldflags '$(LDFLAGS)'

# The Helm chart, packaged as dist/kube-preloader-CHART_VERSION.tgz: the
# chart's version is VERSION without its v (a semver, as Helm wants; a
# non-semver VERSION such as a bare commit gives 0.0.0-VERSION), its
# appVersion, and with it the image tag it deploys by default, VERSION.
HELM          ?= $(shell command -v helm 2>/dev/null || echo $(HOME)/.cache/kube-preloader/bin/helm-v4.3.1)
CHART_VERSION ?= $(shell v='$(patsubst v%,%,$(VERSION))'; echo "$$v" | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+' && echo "$$v" || echo "0.0.0-$$v")
chart:
	$(HELM) lint --strict charts/kube-preloader
	$(HELM) package charts/kube-preloader --version '$(CHART_VERSION)' --app-version '$(VERSION)' -d dist

# The chart as an OCI artifact: CHART_REPO=oci://REGISTRY/charts pushes
# REGISTRY/charts/kube-preloader:CHART_VERSION, the way air-gapped sites
# mirror charts (log in first with helm registry login; HELM_PUSH_FLAGS
# passes --plain-http or --ca-file).
chart-push: chart
	@test -n "$(CHART_REPO)" || { echo "usage: make chart-push CHART_REPO=oci://REGISTRY/PATH [VERSION=v0.1.0]" >&2; exit 2; }
	$(HELM) push $(HELM_PUSH_FLAGS) dist/kube-preloader-$(CHART_VERSION).tgz $(CHART_REPO)

# The real-node proof: a one-node cluster (etcd, kube-apiserver,
# controller-manager, scheduler, kubelet, containerd 1.6 and 2.x, CRI-O) on
# 127.0.0.1, the agent image built with `make image` and installed with
# kubectl apply -k integration/e2e/overlay; prints the scenario table. A
# missing prerequisite fails it, as under CI.
e2e: deps
	PRELOADER_REQUIRE_INTEGRATION=1 $(GO) test ./integration/e2e/ -v -count=1 -timeout 30m

clean:
	rm -rf bin

# The kubectl plugin's release, made by goreleaser (.goreleaser.yaml, the
# tool pinned in tools/release/go.mod): kubectl-preload archives for linux and
# darwin (amd64, arm64), SHA256SUMS and the krew manifest krew/preload.yaml,
# copied from goreleaser's work directory into OUT (default dist/).
# goreleaser takes VERSION as its current tag, so no git tag is needed, and
# --snapshot publishes nothing; krew wants a semver VERSION (make release
# VERSION=v0.1.0). RELEASE_URL (in the environment) is where the manifest
# says the archives are downloaded from; RELEASE_FLAGS=--single-target
# builds only this machine's platform.
OUT             ?= dist
RELEASE_FLAGS   ?=
GORELEASER_DIST := _output/goreleaser# .goreleaser.yaml's dist
# goreleaser asks git for the remote's URL and, in a checkout without a
# remote (a worktree, an unpacked tarball), drops what git told it: tag
# v0.0.0 and a zero commit time. A remote given in the environment only
# answers that question; a configured one comes first.
RELEASE_GIT_ENV := GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=remote.origin.url GIT_CONFIG_VALUE_0=https://github.com/kube-preloader/kube-preloader.git
SEMVER          := ^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$$
.PHONY: release
release:
	@echo '$(VERSION)' | grep -Eq '$(SEMVER)' || { echo 'release: VERSION=$(VERSION) is not a semver tag (krew needs one): tag the release or pass VERSION=v0.1.0' >&2; exit 2; }
	GORELEASER_CURRENT_TAG='$(VERSION)' $(RELEASE_GIT_ENV) $(GO) tool -modfile=tools/release/go.mod goreleaser release --snapshot --clean $(RELEASE_FLAGS)
	mkdir -p '$(OUT)/krew'
	cd $(GORELEASER_DIST) && cp $$(awk '{print $$2}' SHA256SUMS) SHA256SUMS '$(abspath $(OUT))/'
	cp $(GORELEASER_DIST)/krew/preload.yaml '$(OUT)/krew/'
