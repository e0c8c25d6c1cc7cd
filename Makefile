# The targets CI runs (.ci/run calls `make test`). Every target is a plain
# command you can also type yourself.
GO      ?= go
PKGS    ?= ./...
FUZZTIME ?= 30s
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: build run test test-race test-short bench fuzz fuzz-ci fuzz-long lint fmt vet generate generate-check clean

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

generate-check: ## the committed generated code matches the .proto
	@if command -v protoc >/dev/null 2>&1; then sh protocol/gen.sh && sh backends/proto/gen.sh; \
	elif [ -n "$$CI" ]; then echo "generate-check: protoc is missing under CI" >&2; exit 1; \
	else echo "generate-check: SKIPPED, protoc not installed (apt-get install protobuf-compiler)" >&2; fi

clean:
	rm -rf bin/
