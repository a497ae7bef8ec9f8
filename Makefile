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
FUZZ          ?= ./imageconv:FuzzParseIndex ./nbdserver:FuzzHandshake ./nbdserver:FuzzRequests
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

.PHONY: test
test: deps ## install deps, go vet, go test -race, short fuzz runs
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) ./...
	@for f in $(FUZZ); do \
		pkg="$${f%%:*}"; name="$${f#*:}"; \
		listed="$$($(GO) test -list "^$$name\$$" "$$pkg")"; \
		grep -qx "$$name" <<<"$$listed" || { echo "FUZZ: no $$name in $$pkg"; exit 1; }; \
		echo "fuzz $$name in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) "$$pkg" || exit 1; \
	done

.PHONY: demo
demo: deps build ## run the end-to-end demo (local registry, convert, inspect, lazy container start vs full pull; root)
	scripts/demo.sh

.PHONY: bench
bench: deps build ## run the benchmarks: bench/convert/run.sh, then bench/fio/run.sh (~20 min)
	bench/convert/run.sh
	bench/fio/run.sh

.PHONY: bench-vm
bench-vm: deps ## fio on /dev/nbdN (kernel attacher) vs a loop device, in a QEMU guest: bench/vm/run.sh (~6 min)
	bench/vm/run.sh

.PHONY: lint
lint: ## gofmt -l must print nothing; go vet
	@out="$$(gofmt -l .)"; \
	if [[ -n "$$out" ]]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: clean
clean: ## remove bin/ and benchmark results (keeps the bench cache)
	rm -rf $(BIN) bench/convert/results
