# Two commands on a fresh machine:  make demo  |  make test
# Each creates .venv (Python 3.11) and installs requirements-train.txt + -app.txt + -dist.txt once.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-steel test install clean

install: $(STAMP)

$(STAMP): requirements-train.txt requirements-infer.txt requirements-app.txt requirements-dist.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-train.txt -r requirements-app.txt -r requirements-dist.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-test.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) demo.py

demo-steel: $(STAMP)
	$(PY) demo.py --steel

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf demo_work demo_steel .pytest_cache
