# Every target builds its own virtual environment, so a fresh machine needs nothing by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned to the builds this machine serves from local disk.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
export MSEG_ROOT ?= $(abspath ../shared/mseg)

# What a lent GPU machine lacks (it reaches no registry), for tools/gpu_check.py: wheels of the packages
# its image does not have (timm too, to run the version tested here) and a copy of the MSeg taxonomy files.
GPU_WHEELS ?= open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 submitit==1.5.4 timm==1.0.31
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64

.PHONY: venv demo test test-fast gpu-pack clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[test,app]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) tools/demo.py --output-dir runs/demo

test: venv
	$(PY) -m pytest -m "slow or not slow" -q

test-fast: venv
	$(PY) -m pytest -q

gpu-pack:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    $(addprefix --platform ,$(GPU_PLATFORMS)) -d .whl $(GPU_WHEELS)
	rm -rf .whl/mseg && mkdir -p .whl/mseg/mseg/dataset_lists
	cp -r --no-preserve=mode $(MSEG_ROOT)/mseg/class_remapping_files .whl/mseg/mseg/
	cd $(MSEG_ROOT)/mseg/dataset_lists && find . -name '*_names.txt' -exec cp --no-preserve=mode --parents {} $(abspath .whl/mseg/mseg/dataset_lists) \;

clean:
	rm -rf $(VENV) runs
