# Every target builds its own virtual environment, so a fresh machine needs nothing by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned to the builds this machine serves from local disk.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export MSEG_ROOT ?= $(abspath ../shared/mseg)

.PHONY: venv demo test test-fast clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) tools/demo.py --output-dir runs/demo

test: venv
	$(PY) -m pytest -m "slow or not slow" -q

test-fast: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
