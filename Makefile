# Two commands for a fresh machine:
#   make demo   set up a virtual environment, train the default recipe (flow matching) on the bundled 8x8 digits, sample a grid
#   make test   set up the same environment and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
MINUTES ?= 4
RUN ?= runs/digits-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo test test-all bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/difflab train --data digits --out $(RUN) --minutes $(MINUTES)
	$(VENV)/bin/difflab sample --run $(RUN) --num 100 --sampler ipndm --steps 10 --out $(RUN)/samples_ipndm_10.png
	@echo "demo done: see $(RUN)/samples.png, $(RUN)/samples_ipndm_10.png and $(RUN)/loss.png"

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ""

bench: setup
	$(PY) -m pip install -q -e ".[bench]"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
