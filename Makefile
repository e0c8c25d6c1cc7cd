# The targets CI runs (.ci/run calls `make test`). Every target is a plain
# command you can also type yourself.
GO      ?= go
PKGS    ?= ./...
FUZZTIME ?= 30s
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
# The build date is the commit time, so that two builds of one commit are
# byte for byte the same (make reproducible checks it).
EPOCH   ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 1)
DATE    ?= $(shell TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)

# Release builds: static, no cgo, no paths of this machine, no VCS stamp
# (the commit is in the ldflags), no build tags. gnet's poll_opt tag is
# deliberately not used: it does not build on loong64 (docs/deploy.md).
ARCHES  ?= amd64 arm64 loong64
DIST    ?= dist
DISTFLAGS := -trimpath -buildvcs=false -tags= -ldflags '$(LDFLAGS)'

.PHONY: build run test test-race test-short bench fuzz fuzz-ci fuzz-long lint fmt vet generate generate-check generate-web generate-web-check clean \
	dist bundle verify-bundle reproducible image

build: ## static binaries in bin/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/...

run: ## run the gateway with embedded defaults
	$(GO) run ./cmd/unigate

test: lint generate-check test-race fuzz-ci ## everything CI checks

test-race: ## all tests with the race detector
	$(GO) test -race -count=1 $(PKGS)

test-short: ## quick tests, no race detector
	$(GO) test -short -count=1 $(PKGS)

bench: ## benchmarks of the hot paths (compare runs with benchstat)
	$(GO) test -run '^$$' -bench . -benchmem -count=6 ./netpoll/ ./protocol/ ./broker/... ./limiter/ ./internal/token/

# fuzz-ci bounds each target by a count of inputs, not a duration: very short
# duration-bounded runs sometimes end in go test's own "context deadline exceeded".
fuzz-ci: ## every fuzz target for 20,000 inputs (CI)
	@$(MAKE) --no-print-directory fuzz FUZZTIME=20000x

fuzz-long: ## every fuzz target for 10 minutes each
	@$(MAKE) --no-print-directory fuzz FUZZTIME=10m

fuzz: ## run every fuzz target for FUZZTIME each; new crashers land in testdata/
	@set -e; for pkg in $$($(GO) list ./...); do \
	  dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
	  for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/func //'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

lint: fmt vet ## gofmt + go vet

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

generate: ## regenerate protocol/pb and backends/proto from their .proto files (needs protoc)
	sh protocol/gen.sh -w
	sh backends/proto/gen.sh -w

generate-check: ## the committed generated code matches the .proto (and the browser crypto client its sources)
	@if command -v protoc >/dev/null 2>&1; then sh protocol/gen.sh && sh backends/proto/gen.sh; \
	elif [ -n "$$CI" ]; then echo "generate-check: protoc is missing under CI" >&2; exit 1; \
	else echo "generate-check: SKIPPED, protoc not installed (apt-get install protobuf-compiler)" >&2; fi
	@$(MAKE) --no-print-directory generate-web-check

# The widget's crypto client builds (web/crypto/dist) are bundled from
# web/crypto and its npm packages (npm ci in web/crypto) by web/bundle
# (esbuild's Go API, a module of its own). The output is committed: a clone
# runs without Node.
generate-web: ## rebuild web/crypto/dist/unigate-crypto*.js (needs npm ci in web/crypto)
	$(GO) -C web/bundle run .

generate-web-check: ## the committed crypto client builds are what web/bundle builds
	@if [ -d web/crypto/node_modules/sm-crypto ]; then $(GO) -C web/bundle run . -check; \
	elif [ -n "$$CI" ]; then echo "generate-web-check: web/crypto/node_modules is missing under CI (npm ci)" >&2; exit 1; \
	else echo "generate-web-check: SKIPPED, run npm ci in web/crypto" >&2; fi

dist: ## static release binaries for $(ARCHES) in dist/linux-<arch>/
	@set -e; for a in $(ARCHES); do \
	  echo "== linux/$$a"; \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$a $(GO) build $(DISTFLAGS) -o $(DIST)/linux-$$a/ ./cmd/unigate ./cmd/unigate-bench; \
	done; ls -l $(DIST)/linux-*/unigate*

bundle: dist ## offline bundles dist/unigate-<version>-linux-<arch>.tar.gz, with SHA256SUMS and SM3SUMS
	$(GO) run ./deploy/mkbundle -dist $(DIST) -arch $$(echo $(ARCHES) | tr ' ' ,) \
	  -version $(VERSION) -commit $(COMMIT) -epoch $(EPOCH)
	@$(MAKE) --no-print-directory verify-bundle

verify-bundle: ## check every bundle in dist/ with the host's own unigate verify
	@set -e; host=$$($(GO) env GOARCH); \
	for b in $(DIST)/unigate-$(VERSION)-linux-*.tar.gz; do $(DIST)/linux-$$host/unigate verify $$b; done; \
	cd $(DIST) && sha256sum -c SHA256SUMS

# Rebuilds ARCH (default amd64) from a copy of the tree at another path with
# an empty build cache, and compares the bytes with dist/.
REPRO_ARCH ?= amd64
reproducible: ## prove that a second, cold build of linux/$(REPRO_ARCH) gives the same bytes as make dist
	@set -e; tmp=$$(mktemp -d); trap 'chmod -R u+w $$tmp; rm -rf $$tmp' EXIT; \
	git ls-files -z | tar --null -T - -cf - | (mkdir $$tmp/src && cd $$tmp/src && tar xf -); \
	(cd $$tmp/src && CGO_ENABLED=0 GOOS=linux GOARCH=$(REPRO_ARCH) GOCACHE=$$tmp/cache \
	  $(GO) build $(DISTFLAGS) -o $$tmp/out/ ./cmd/unigate ./cmd/unigate-bench); \
	for b in unigate unigate-bench; do \
	  cmp $(DIST)/linux-$(REPRO_ARCH)/$$b $$tmp/out/$$b || { echo "reproducible: $$b differs" >&2; exit 1; }; \
	  echo "reproducible: $$b $$(sha256sum < $$tmp/out/$$b | cut -c1-16)... identical"; \
	done

IMAGE ?= unigate:$(VERSION)
BUILDER ?= docker
image: dist ## container image FROM scratch for the host architecture (deploy/docker; BUILDER=buildah without Docker)
	BUILDER="$(BUILDER)" sh deploy/docker/build.sh $(DIST) $(IMAGE)

clean:
	rm -rf bin/ $(DIST)/
