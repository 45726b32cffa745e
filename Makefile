# The two commands: `make book` builds the book on the embedded default, `make test` passes the tests.
# Both create .venv on first use and install into it; later runs only reinstall when the pins change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
export HF_HUB_OFFLINE ?= 1

.PHONY: book test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) torch torchvision
	$(PIP) -e ".[dev]"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest

book: $(VENV)/.installed
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going

clean:
	rm -rf _build
