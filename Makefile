# Two commands on a fresh machine:  make demo  |  make test
# Each creates .venv (Python 3.11) and installs requirements-train.txt + -app.txt + -dist.txt once.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The Node.js and browser examples (examples/, tests/test_e2e.py): npm packages only, no install scripts.
NODE_STAMP := examples/node_modules/.package-lock.json

.PHONY: demo demo-steel test install clean

install: $(STAMP) $(NODE_STAMP)

$(STAMP): requirements-train.txt requirements-infer.txt requirements-app.txt requirements-dist.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-train.txt -r requirements-app.txt -r requirements-dist.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-test.txt
	@# ultralytics pulls in opencv-python, whose cv2 would shadow the pinned headless one: keep one OpenCV, the pinned
	$(PY) -m pip uninstall --quiet --yes opencv-python
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
		"$$(grep '^opencv-python-headless==' requirements-infer.txt)"
	touch $(STAMP)

$(NODE_STAMP): examples/package.json examples/package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix examples --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the Node.js and browser example tests cannot run (apt-get install nodejs npm)"; fi

demo: $(STAMP)
	$(PY) demo.py

demo-steel: $(STAMP)
	$(PY) demo.py --steel

test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf demo_work demo_steel .pytest_cache
