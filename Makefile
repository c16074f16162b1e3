# Two commands do all the set-up on a fresh machine:
#   make demo   evaluate the toy UCE submission on the toy world (offline, CPU, a few minutes)
#   make test   run the test suite
# Both create .venv and install the project into it when needed.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
export HF_HUB_OFFLINE = 1

.PHONY: demo test validate install clean-cache

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pytest --unlearn-submission submissions/toy-uce-style.yaml

test: $(STAMP)
	$(BIN)/pytest -n 2 tests

validate: $(STAMP)
	$(BIN)/unlearn validate submissions/*.yaml suites/*.yaml

clean-cache:
	rm -rf .unlearn-cache
