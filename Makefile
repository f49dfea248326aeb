# `make demo` and `make test` set everything up on a fresh machine (venv, pinned deps, build of
# vidcore._C) and are safe to run again: each step reruns only when its inputs changed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2
SOURCES := $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/include/*/*.h) setup.py pyproject.toml

.PHONY: demo test test-slow bench clean

# The demo's results go to build/bench (ignored): bench/results holds curated snapshots only.
demo: $(VENV)/.built
	$(VENV)/bin/vidcore info
	$(VENV)/bin/vidcore bench --size small --out build/bench

test: $(VENV)/.built
	$(PY) -m pytest tests bench -m "not slow" --benchmark-disable -q

test-slow: $(VENV)/.built
	$(PY) -m pytest tests -m slow -q

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
