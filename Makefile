# The two commands: `make book` builds the book on the embedded default, `make test` passes the tests.
# Both create .venv on first use and install into it; later runs only reinstall when the pins change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt
export HF_HUB_OFFLINE ?= 1
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu for torch's CPU build (the book's CI does)
TORCH_INDEX ?=

.PHONY: book test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) torch torchvision $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) -e ".[dev]"
	touch $@

# The browser test drives Debian's chromium with playwright (no browser download).
export CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || \
	  ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

test: $(VENV)/.installed $(CHROMIUM)
	$(PY) -m pytest

book: $(VENV)/.installed
	$(PY) book/build.py

clean:
	rm -rf _build book/*.ipynb
