# Thin: each target is one cargo command plus the environment it needs.
#   make pipeline [TASK=dtd]   run pipelines/$(TASK).toml, or the embedded default
#   make test                  flex build + tests, then the tch build's tests
#   make bench                 benchmarks (pipeline overhead, fine-tune speed against PyTorch,
#                              SVD libraries); figures go to BENCHMARKS.md by hand
# PyTorch 2.9.0 (for burn-tch and the reference scripts) is installed by pip into
# .venv on first use; nothing is downloaded by the programs themselves.

VENV      ?= .venv
PY        := $(VENV)/bin/python
TORCH     := 2.9.0
TORCHVISION := 0.24.0
TIMM      := 1.0.22
STORE     ?= artifacts
CARGO     ?= cargo
TASK      ?=
ARGS      ?=

# Environment for building and running against LibTorch from the venv's torch.
TCH_ENV = LIBTORCH_USE_PYTORCH=1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
	LD_LIBRARY_PATH="$$($(PY) -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))'):$$LD_LIBRARY_PATH"

.PHONY: pipeline status gc test test-flex test-tch bench venv clean-venv chromium

$(VENV)/.installed-$(TORCH)-$(TIMM):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir torch==$(TORCH) torchvision==$(TORCHVISION) timm==$(TIMM) pyarrow pandas numpy
	touch $@

venv: $(VENV)/.installed-$(TORCH)-$(TIMM)

# Stage binaries without tensors, and those with (built with the backend feature).
PLAIN_BINS  := graft-runner graft-prep graft-propose graft-report graft-command
TENSOR_BINS := graft-pretrain graft-probe graft-finetune

# Uses tch when PyTorch can be installed, flex otherwise (said out loud).
pipeline:
	@if $(MAKE) --no-print-directory venv; then \
		echo "backend: tch (LibTorch from $(VENV)) for the stages that use tensors"; \
		backend=tch; \
	else \
		echo "PyTorch $(TORCH) could not be installed into $(VENV): falling back to the flex backend (about 3x slower)"; \
		backend=flex; \
	fi; \
	$(CARGO) build --release $(addprefix -p ,$(PLAIN_BINS)) || exit 1; \
	if [ -n "$(strip $(TENSOR_BINS))" ]; then \
		if [ $$backend = tch ]; then $(TCH_ENV) $(CARGO) build --release $(addprefix -p ,$(TENSOR_BINS)) --no-default-features --features tch || exit 1; \
		else $(CARGO) build --release $(addprefix -p ,$(TENSOR_BINS)) || exit 1; fi; \
	fi; \
	if [ $$backend = tch ]; then export $(TCH_ENV); fi; \
	target/release/graft --store $(STORE) run $(TASK) $(ARGS)

status:
	$(CARGO) build --release $(addprefix -p ,$(PLAIN_BINS))
	target/release/graft --store $(STORE) status $(TASK) $(ARGS)

gc:
	$(CARGO) run --release --bin graft -- --store $(STORE) gc $(ARGS)

# Tests that compare with something outside the workspace (timm and pyarrow from $(VENV),
# Chromium) fail when it is missing, unless GRAFT_ALLOW_MISSING names it (venv, chromium or
# all; .ci/run never sets it). Each appends `ran ...` or `skipped ...` to this log, which
# `make test` sums up at the end, since cargo hides what passing tests print.
export GRAFT_EXTERNAL_LOG ?= $(CURDIR)/target/external-checks.log

test: test-flex test-tch
	@echo "external checks: $$(grep -s '^ran ' $(GRAFT_EXTERNAL_LOG) | wc -l) ran, $$(grep -s '^skipped ' $(GRAFT_EXTERNAL_LOG) | wc -l) skipped"
	@sed 's/^/  /' $(GRAFT_EXTERNAL_LOG) 2>/dev/null || true

test-flex: venv chromium
	@rm -f $(GRAFT_EXTERNAL_LOG)
	$(CARGO) build --workspace --bins
	GRAFT_CHROMIUM="$$(command -v chromium || true)" $(CARGO) test --workspace

# Debian's Chromium for the report's browser test; without it that test fails (say
# GRAFT_ALLOW_MISSING=chromium to run the others knowingly without it).
chromium:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) \
		|| echo "chromium could not be installed: the report's browser test will fail (GRAFT_ALLOW_MISSING=chromium skips it knowingly)"

test-tch: venv
	$(TCH_ENV) $(CARGO) test -p graft-backend -p graft-model -p graft-train -p graft-probe -p graft-finetune --no-default-features --features tch

bench: venv
	$(CARGO) build --release $(addprefix -p ,$(PLAIN_BINS) $(TENSOR_BINS))
	bash bench/pipeline.sh
	bash bench/finetune_speed.sh vit-cpu-small 64 adapters
	bash bench/finetune_speed.sh vit-cpu-small 64 full
	$(CARGO) run -q --release -p graft-probe --example svd_bench --features bench-linalg

clean-venv:
	rm -rf $(VENV)
