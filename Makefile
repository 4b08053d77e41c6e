# The two README commands: `make demo` and `make test`. Everything installs from scratch.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
LS_VENV := .venv-ls
FD_VENV := .venv-fastdup
TORCH := torch==2.14.1 torchvision==0.29.1
LABEL_STUDIO := label-studio==1.23.2
FASTDUP := fastdup==2.54
PIP_QUIET ?= -q
export SENTRY_OPT_OUT := 1
export FASTDUP_PRODUCTION := 1
export LATEST_VERSION_CHECK := false
export COLLECT_ANALYTICS := false

.PHONY: demo test install install-ls install-fastdup venvs unit integration clean-venvs samples

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) --upgrade pip
	$(VENV)/bin/pip install $(PIP_QUIET) $(TORCH)
	$(VENV)/bin/pip install $(PIP_QUIET) -e ".[train,dev,ray]"
	touch $@

$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install $(PIP_QUIET) --upgrade pip
	$(LS_VENV)/bin/pip install $(PIP_QUIET) $(LABEL_STUDIO)
	touch $@

$(FD_VENV)/.installed:
	$(PYTHON) -m venv $(FD_VENV)
	$(FD_VENV)/bin/pip install $(PIP_QUIET) --upgrade pip
	$(FD_VENV)/bin/pip install $(PIP_QUIET) $(FASTDUP)
	touch $@

install: $(VENV)/.installed
install-ls: $(LS_VENV)/.installed
install-fastdup: $(FD_VENV)/.installed

# Space each venv's build needs (GB: its size here plus pip's unpacking; torch's CUDA build is
# 5.5 GB of .venv): scripts/check_disk.py stops with one line before pip fills the disk.
DISK_NEEDS_MAIN := $(VENV)=10
DISK_NEEDS_LS := $(LS_VENV)=1.5
DISK_NEEDS_FD := $(FD_VENV)=1.5

# The three venvs are independent: build them in parallel.
venvs:
	@$(PYTHON) scripts/check_disk.py $(DISK_NEEDS_MAIN) $(DISK_NEEDS_LS) $(DISK_NEEDS_FD)
	$(MAKE) -j3 $(VENV)/.installed $(LS_VENV)/.installed $(FD_VENV)/.installed

demo:
	@$(PYTHON) scripts/check_disk.py $(DISK_NEEDS_MAIN) $(DISK_NEEDS_LS)
	$(MAKE) install install-ls
	bash scripts/demo.sh

test: venvs
	$(VENV)/bin/python -m pytest -q

unit: install
	$(VENV)/bin/python -m pytest -q -m "not integration"

# The Label Studio tests alone (they start label-studio from .venv-ls once per session).
integration: install install-ls
	$(VENV)/bin/python -m pytest -q -m integration tests/integration

samples: install
	$(VENV)/bin/python scripts/make_samples.py --out data/samples

clean-venvs:
	rm -rf $(VENV) $(LS_VENV) $(FD_VENV)
