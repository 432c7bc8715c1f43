# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test system-deps lint schemas bench bench-e2e reliability chaos soak hostile stall fuzz mutate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/riskgate demo --duration $${DURATION:-30}

# Three processes (pytest-xdist), whole files to each, even on 2 cores: the broker
# tests mostly wait (on the broker's group joins, the wall clock, subprocesses), so a
# third process fills the idle CPU (measured at load 5 from other work: -n 2 365 s,
# -n 3 290 s; serial ~8 min). Each process has its own session broker; every test has
# topics and a group of its own. TEST_JOBS=0 runs it serially.
test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -n $${TEST_JOBS:-3} --dist loadfile

# Debian packages the tests drive: chromium + chromium-driver (browser tests of the
# replay report and the console, via Selenium with the system driver, never a
# downloaded browser) and kcat (interop tests). Installed with apt when missing
# and we are root; otherwise the tests that need them say so (and fail under CI).
SYSTEM_DEPS := chromium chromium-driver kcat
system-deps:
	@missing=""; for p in $(SYSTEM_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (browser/interop tests will report it)"; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check worker tests bench
	$(BIN)/ruff format --check worker tests bench
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/python -m worker.schemas

# Benchmarks print numbers; they are not tests. Each starts its own embedded broker.
# Run as modules from the root so `bench.*` and `tests.support.*` import without sys.path edits.
bench: $(STAMP)
	$(BIN)/python -m bench.core
	$(BIN)/python -m bench.decision_cost
	$(BIN)/python -m bench.memory_model
	$(BIN)/python -m bench.gateview_cost

bench-e2e: $(STAMP)
	$(BIN)/python -m bench.e2e_throughput
	$(BIN)/python -m bench.e2e_latency --seconds 30 --worker-fetch-max-wait-ms 5
	$(BIN)/python -m bench.e2e_restore --symbols 10000,100000 --source both
	$(BIN)/python -m bench.check_latency

# Reliability suite (tests/chaos/README.md). `reliability` is its default-run part;
# the others are the long variants.
reliability: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit/test_hostile_input.py tests/unit/test_snapshot_compat.py tests/unit/test_reliability_event_ids.py tests/integration/test_reliability_crashloop.py tests/integration/test_reliability_stall.py tests/integration/test_reliability_hostile.py tests/integration/test_reliability_soak.py

chaos: $(STAMP)  ## KILLS=50 EVENTS=100000 SEED=7
	$(BIN)/python -m tests.chaos.crash_loop --kills $${KILLS:-50} --events $${EVENTS:-100000} --seed $${SEED:-7}

soak: $(STAMP)  ## MINUTES=10 RATE=5000 SYMBOLS=10000
	$(BIN)/python -m tests.chaos.soak --minutes $${MINUTES:-10} --rate $${RATE:-5000} --symbols $${SYMBOLS:-10000}

stall: $(STAMP)
	$(BIN)/python -m pytest -q -s tests/integration/test_reliability_stall.py

hostile: $(STAMP)
	$(BIN)/python -m pytest -q -s tests/unit/test_hostile_input.py tests/integration/test_reliability_hostile.py

# Both adversarial state machines (engine, worker shell), pass after pass with
# fresh random seeds, until FUZZ_MINUTES are up; any failure stops it (exit 1)
# and hypothesis prints the minimal failing sequence (also kept in .hypothesis/).
fuzz: $(STAMP)  ## FUZZ_MINUTES=10 FUZZ_EXAMPLES=100 (RISKGATE_FUZZ_STEPS: steps per example)
	@end=$$(( $$(date +%s) + 60 * $${FUZZ_MINUTES:-10} )); passes=0; examples=0; log=$$(mktemp); \
	while [ $$(date +%s) -lt $$end ]; do \
	  RISKGATE_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-100} $(BIN)/python -m pytest -q -p no:cacheprovider \
	    --timeout=0 --hypothesis-show-statistics tests/adversarial > $$log 2>&1 || { cat $$log; exit 1; }; \
	  n=$$(awk '/ passing, [0-9]+ failing/ {s += $$2} END {print s + 0}' $$log); \
	  passes=$$((passes + 1)); examples=$$((examples + n)); \
	  echo "pass $$passes: $$(tail -n 1 $$log), $$n examples"; \
	done; rm -f $$log; \
	echo "fuzz: $$passes passes, $$examples examples over every state machine, no failure"

# Mutation score of the core (worker/core/) against the unit
# suite; config in pyproject.toml [tool.mutmut]. Part of it only:
# `make mutate MUTANTS="worker.core.gates.* worker.core.account.*"`. Prints the
# score per module (mutants not checked apart). Survivors: `mutmut results`,
# one diff: `mutmut show <name>`.
MUTANTS ?=
mutate: $(STAMP)
	set -f; RISKGATE_PROPERTY_EXAMPLES=25 $(BIN)/mutmut run --max-children $${JOBS:-2} $(MUTANTS)
	set -f; $(BIN)/python -m tests.support.mutation_score $(MUTANTS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants
