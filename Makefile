# Thin: each target is one cargo command plus the environment it needs.
#   make pipeline [TASK=dtd]   run pipelines/$(TASK).toml, or the embedded default
#   make test                  flex build + tests, then the tch build's tests
#   make bench                 benchmarks (pipeline overhead, fine-tune speed against PyTorch,
#                              SVD libraries); figures go to BENCHMARKS.md by hand
#   make bench-sweep [TASK=ci]  a pipeline's whole fine-tune sweep, graft against PyTorch
#   make bench-cache [TASK=ci]  the fine-tune stage with and without the activation cache
#   make bench-precision       the ViT-B/16 adapter step in f32 and bf16, graft against PyTorch
#   make bench-precision-probe the ViT-B/16 probe's passes in f32 and bf16, the same way
# PyTorch 2.9.0 (for burn-tch and the reference scripts) is installed by pip into
# .venv on first use; nothing is downloaded by the programs themselves.
#   make ... PYTHON=/path/to/python   use that interpreter's PyTorch instead (bring your own:
#                                     no pip install; .venv becomes a shim that runs it)
#   make slurm-up / make slurm-down   a one-node Slurm cluster here (tests/slurm.sh; root)

VENV      ?= .venv
PY        := $(VENV)/bin/python
TORCH     := 2.9.0
# The PyTorch versions the tch build links against: torch-sys 0.22 checks for exactly this.
SUPPORTED_TORCH := 2.9.0
# Bring your own PyTorch: PYTHON (or TORCH_PYTHON) names an interpreter with torch installed.
TORCH_PYTHON ?=
PYTHON    ?= $(TORCH_PYTHON)
TORCHVISION := 0.24.0
TIMM      := 1.0.22
STORE     ?= artifacts
CARGO     ?= cargo
TASK      ?=
ARGS      ?=

# Environment for building and running against LibTorch from the venv's torch (found
# without importing it, which takes seconds).
TCH_ENV = LIBTORCH_USE_PYTORCH=1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH" \
	LD_LIBRARY_PATH="$$($(PY) -c 'import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec("torch").origin), "lib"))'):$$LD_LIBRARY_PATH"

.PHONY: pipeline status gc test test-flex test-tch bench bench-step bench-sweep bench-cache bench-pinning bench-precision bench-precision-probe venv clean-venv chromium slurm-up slurm-down gpu-binaries

$(VENV)/.installed-$(TORCH)-$(TIMM):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-cache-dir torch==$(TORCH) torchvision==$(TORCHVISION) timm==$(TIMM) pyarrow pandas numpy
	touch $@

ifeq ($(strip $(PYTHON)),)
venv: $(VENV)/.installed-$(TORCH)-$(TIMM)
else
# $(VENV)/bin/python{,3} run $(PYTHON), so the tch build (torch-sys runs `python3` from PATH),
# the tests and the reference scripts all use its torch. A torch outside SUPPORTED_TORCH stops
# here, unless LIBTORCH_BYPASS_VERSION_CHECK is set (then torch-sys's own check is skipped too).
venv:
	@v=$$("$(PYTHON)" -c 'import torch; print(torch.__version__.split("+")[0])') \
		|| { echo "PYTHON=$(PYTHON): cannot import torch"; exit 1; }; \
	case " $(SUPPORTED_TORCH) " in \
	*" $$v "*) echo "PyTorch $$v from PYTHON=$(PYTHON)";; \
	*) if [ -n "$$LIBTORCH_BYPASS_VERSION_CHECK" ]; then \
		echo "PyTorch $$v from PYTHON=$(PYTHON) is not a supported version ($(SUPPORTED_TORCH)); LIBTORCH_BYPASS_VERSION_CHECK is set, building against it anyway"; \
	   else \
		echo "PYTHON=$(PYTHON) has PyTorch $$v, but graft's tch build (torch-sys 0.22) supports PyTorch $(SUPPORTED_TORCH) only;"; \
		echo "use an interpreter with torch==$(TORCH), leave PYTHON unset to install it into $(VENV), or set LIBTORCH_BYPASS_VERSION_CHECK=1 to try anyway"; \
		exit 1; \
	   fi;; \
	esac; \
	if [ -f "$(VENV)/pyvenv.cfg" ]; then \
		echo "$(VENV) is a virtual environment made by pip; remove it (make clean-venv) to use PYTHON=$(PYTHON)"; exit 1; \
	fi; \
	py=$$(command -v "$(PYTHON)"); case $$py in /*) ;; *) py=$$PWD/$$py;; esac; \
	mkdir -p "$(VENV)/bin" && for n in python python3; do \
		printf '#!/bin/sh\nexec "%s" "$$@"\n' "$$py" > "$(VENV)/bin/$$n" && chmod +x "$(VENV)/bin/$$n"; \
	done; \
	"$(PY)" -c 'import timm, pyarrow, pandas' 2>/dev/null \
		|| echo "note: PYTHON=$(PYTHON) lacks timm, pyarrow or pandas, which the tests and reference scripts need (make test)"
endif

# Stage binaries without tensors, and those with (built with the backend feature).
# graft-front (flex) answers the tensor stages' checks and fresh runs without LibTorch; it
# defers to a stage binary newer than itself, so the plain binaries are built last.
PLAIN_BINS  := graft-runner graft-prep graft-propose graft-report graft-command graft-front
TENSOR_BINS := graft-pretrain graft-probe graft-finetune

# Uses tch when PyTorch can be installed, flex otherwise (said out loud).
pipeline:
	@if $(MAKE) --no-print-directory venv; then \
		echo "backend: tch (LibTorch from $(VENV)) for the stages that use tensors"; \
		backend=tch; \
	elif [ -n "$(strip $(PYTHON))" ]; then exit 1; \
	else \
		echo "PyTorch $(TORCH) could not be installed into $(VENV): falling back to the flex backend (about 3x slower)"; \
		backend=flex; \
	fi; \
	if [ -n "$(strip $(TENSOR_BINS))" ]; then \
		if [ $$backend = tch ]; then $(TCH_ENV) $(CARGO) build --release $(addprefix -p ,$(TENSOR_BINS)) --no-default-features --features tch || exit 1; \
		else $(CARGO) build --release $(addprefix -p ,$(TENSOR_BINS)) || exit 1; fi; \
	fi; \
	$(CARGO) build --release $(addprefix -p ,$(PLAIN_BINS)) || exit 1; \
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

# --no-fail-fast: a failing test target does not hide the results of the targets after it.
test-flex: venv chromium
	@rm -f $(GRAFT_EXTERNAL_LOG)
	$(CARGO) build --workspace --bins
	GRAFT_CHROMIUM="$$(command -v chromium || true)" $(CARGO) test --workspace --no-fail-fast

# Debian's Chromium for the report's browser test; without it that test fails (say
# GRAFT_ALLOW_MISSING=chromium to run the others knowingly without it).
chromium:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) \
		|| echo "chromium could not be installed: the report's browser test will fail (GRAFT_ALLOW_MISSING=chromium skips it knowingly)"

# The tensor binaries are built first: a test runs the tch graft-finetune with an empty
# environment (its rpath names the LibTorch it was linked against).
TCH_TESTED := graft-backend graft-model graft-train graft-pretrain graft-probe graft-finetune
test-tch: venv
	$(TCH_ENV) $(CARGO) build $(addprefix -p ,$(TCH_TESTED)) --bins --no-default-features --features tch
	$(TCH_ENV) $(CARGO) test $(addprefix -p ,$(TCH_TESTED)) --no-default-features --features tch --no-fail-fast

bench: venv
	$(CARGO) build --release $(addprefix -p ,$(PLAIN_BINS) $(TENSOR_BINS))
	bash bench/pipeline.sh
	bash bench/finetune_speed.sh vit-cpu-small 64 adapters
	bash bench/finetune_speed.sh vit-cpu-small 64 full
	$(CARGO) run -q --release -p graft-probe --example svd_bench --features bench-linalg

# The adapter fine-tuning step of the default's preset, graft (tch) against PyTorch + timm,
# in alternating rounds (PRESET, BATCH and ROUNDS to change them).
bench-step: venv
	bash bench/step_pairs.sh $(or $(PRESET),vit-cpu-p8) $(or $(BATCH),64) $(or $(ROUNDS),10)

# A whole fine-tune sweep, graft (tch) against PyTorch + timm on the same runs, every
# fine-tune stage of the pipeline; TASK=ci unless given (the embedded default's takes about
# 25 minutes). BENCH_STORE=<store> reuses a store the pipeline already ran into.
bench-sweep: venv
	$(TCH_ENV) $(CARGO) build --release $(addprefix -p ,$(TENSOR_BINS)) --no-default-features --features tch
	$(CARGO) build --release $(addprefix -p ,$(PLAIN_BINS))
	$(TCH_ENV) bash bench/sweep.sh $(or $(TASK),ci)

# The ViT-B/16 adapter step in f32 and bf16, graft against PyTorch eager and autocast.
bench-precision: venv
	bash bench/precision.sh $(or $(PRESET),vit-b16) $(or $(BATCH),16) $(or $(ROUNDS),5)

# The ViT-B/16 probe's passes in f32 and bf16, the same way.
bench-precision-probe: venv
	MODE=probe bash bench/precision.sh $(or $(PRESET),vit-b16) $(or $(BATCH),4) $(or $(ROUNDS),5) 2

# What pinning LibTorch's CPU kernels to AVX2 costs: the default's pretrain in alternating
# rounds, then the whole default once pinned and once with GRAFT_CPU_KERNELS=native.
bench-pinning: venv
	$(TCH_ENV) $(CARGO) build --release $(addprefix -p ,$(TENSOR_BINS)) --no-default-features --features tch
	$(CARGO) build --release $(addprefix -p ,$(PLAIN_BINS))
	$(TCH_ENV) bash bench/pinning.sh $(or $(ROUNDS),2)

# The fine-tune stage with and without the activation cache, and 1 worker x all cores
# against 1 worker per core, on the same upstream artifacts (TASK=ci unless given).
bench-cache: venv
	$(TCH_ENV) $(CARGO) build --release $(addprefix -p ,$(TENSOR_BINS)) --no-default-features --features tch
	$(CARGO) build --release $(addprefix -p ,$(PLAIN_BINS))
	$(TCH_ENV) bash bench/cache.sh $(or $(TASK),ci)

clean-venv:
	rm -rf $(VENV)

# What bench/gpu.sh runs on a GPU machine without Rust: release graft-prep, graft-probe and
# examples/step_bench (tch), and the PyTorch they were linked against: its full version and
# its CUDA version (`2.9.0+cu128 12.8`; `None` for a CPU-only torch, which gpu.sh refuses).
gpu-binaries: venv
	$(CARGO) build --release -p graft-prep
	$(TCH_ENV) $(CARGO) build --release -p graft-probe --no-default-features --features tch
	$(TCH_ENV) $(CARGO) build --release -p graft-train --example step_bench --no-default-features --features tch
	$(PY) -c 'import torch; print(torch.__version__, torch.version.cuda)' > target/release/torch-version

# A one-node Slurm cluster (slurmctld, slurmd, munged) for trying the fine-tune stage's
# `executor = "slurm"`; state in target/slurm. Needs root and Debian's slurm-wlm and munge.
slurm-up:
	bash tests/slurm.sh up

slurm-down:
	bash tests/slurm.sh down
