# sluice Makefile. `make help` lists the targets.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

GO        ?= go
BIN       := $(CURDIR)/bin
# Go tools installed by scripts/install-deps.sh (its go_tools list).
TOOLS_BIN := $(BIN)/tools
export SLUICE_TOOLS_BIN := $(TOOLS_BIN)
export PATH := $(TOOLS_BIN):$(PATH)

# cgo stays on by default (the race detector needs it); set CGO_ENABLED=0 for
# static binaries, e.g. the one put in the kernel-NBD test VM's initramfs.
CGO_ENABLED ?= 1
export CGO_ENABLED

GOFLAGS_BUILD ?= -trimpath
TEST_TIMEOUT  ?= 60m
TEST_FLAGS    ?=
# Fuzz targets run briefly by `make test`, as "PACKAGE:FuzzName" entries
# (space-separated). Add each new Fuzz* function here.
FUZZ          ?= ./imageconv/artifact:FuzzParseIndex ./nbdserver:FuzzHandshake ./nbdserver:FuzzRequests
FUZZTIME      ?= 15s

.PHONY: help
help: ## list targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## install Debian packages and Go tools needed by tests, demo and bench (root)
	scripts/install-deps.sh

.PHONY: build
build: ## build bin/sluice and bin/sluiced
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/sluice ./cmd/sluice
	$(GO) build $(GOFLAGS_BUILD) -o $(BIN)/sluiced ./cmd/sluiced

# The node release bundle (scripts/bundle.sh): static binaries, so that they
# run on any distribution's libc, install-node.sh and its unit files.
DIST   := $(CURDIR)/dist
GOARCH ?= $(shell $(GO) env GOARCH)

.PHONY: bundle
bundle: ## node release bundle: dist/sluice-node-linux-$(GOARCH).tar.gz (untar it on a node and run install-node.sh)
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(DIST)/static/sluice ./cmd/sluice
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(DIST)/static/sluiced ./cmd/sluiced
	scripts/bundle.sh $(DIST)/sluice-node $(DIST)/static
	tar -C $(DIST) -czf $(DIST)/sluice-node-linux-$(GOARCH).tar.gz sluice-node
	@echo "$(DIST)/sluice-node-linux-$(GOARCH).tar.gz"

# The test run ends with test/internal/testreport's summary: skipped tests by
# reason; a failure, or a skip whose reason is not in SKIPS_ALLOW, fails it.
SKIPS_ALLOW   := test/skips.allow

.PHONY: test
test: deps ## install deps, go vet, short fuzz runs, go test -race ending with the skips by reason
	$(GO) vet ./...
	@for f in $(FUZZ); do \
		pkg="$${f%%:*}"; name="$${f#*:}"; \
		listed="$$($(GO) test -list "^$$name\$$" "$$pkg")"; \
		grep -qx "$$name" <<<"$$listed" || { echo "FUZZ: no $$name in $$pkg"; exit 1; }; \
		echo "fuzz $$name in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$pkg" || exit 1; \
	done
	$(GO) build -o $(BIN)/testreport ./test/internal/testreport
	$(GO) test -json -race -count=1 -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) ./... | $(BIN)/testreport -allow $(SKIPS_ALLOW)

.PHONY: demo
demo: deps build ## the demo: a python3 app with 300 MiB it never reads, started lazily (sluiced) and with a full pull through a throttled local registry; prints the table (root; a few minutes; scripts/demo.sh)
	scripts/demo.sh

# Flags of bench/startup, e.g. BENCH_STARTUP_FLAGS="-links all -runs 5" (go run
# ./bench/startup -help lists them).
BENCH_STARTUP_FLAGS ?=

.PHONY: bench
bench: deps build ## run the benchmarks: bench/convert/run.sh, bench/fio/run.sh, then bench/startup (root; ~20 min, plus bench/startup's default run, whose log gives the time left)
	bench/convert/run.sh
	bench/fio/run.sh
	$(GO) run ./bench/startup $(BENCH_STARTUP_FLAGS)

.PHONY: bench-startup
bench-startup: deps ## pod start time through CRI, lazy vs full pull, containerd 1.6 and 2.x: bench/results/startup.md (root; BENCH_STARTUP_FLAGS)
	$(GO) run ./bench/startup $(BENCH_STARTUP_FLAGS)

.PHONY: bench-vm
bench-vm: deps ## fio on /dev/nbdN (kernel attacher) vs a loop device, in a QEMU guest: bench/vm/run.sh (~6 min)
	bench/vm/run.sh

.PHONY: lint
lint: ## gofmt -l must print nothing; go vet
	@out="$$(gofmt -l .)"; \
	if [[ -n "$$out" ]]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: clean
clean: ## remove bin/, dist/ and benchmark results (keeps the bench cache)
	rm -rf $(BIN) $(DIST) bench/convert/results
