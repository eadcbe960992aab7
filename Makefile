# Two commands do everything on a fresh machine with Python 3.11:
#   make test     install into .venv, then run the test suite: everything under TensorFlow,
#                 then the layer tests (tests/kerasnorm) under JAX and under PyTorch
#   make report   install into .venv, then run the full study and write reports/
#   make docs     install into .venv, then build the API reference, guides and report
#                 into build/site (offline; strict: a broken link or docstring fails it)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
# Where `make report` keeps its runs. The committed ones are reused (finished runs are
# skipped); `make report RESULTS=reports/rerun` trains the whole study anew.
RESULTS ?= reports/results
# The Keras backends the layer tests run under besides TensorFlow; a test marked
# tensorflow_only is skipped there (tests/conftest.py).
OTHER_BACKENDS ?= jax torch

.PHONY: install test report quick bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[study,test,ray,docs]"
	touch $(STAMP)

install: $(STAMP)

# One pytest process per backend (Keras fixes its backend at import). The JAX and PyTorch
# runs go alongside the TensorFlow one, so that the machine's cores share the three, each
# logging to build/test-<backend>.log, whose summary is printed after. Any failing run,
# or one where no test ran (pytest's exit code 5), fails the target.
test: install
	@mkdir -p build
	@for backend in $(OTHER_BACKENDS); do \
		(KERAS_BACKEND=$$backend $(PY) -m pytest -q -p no:cacheprovider --basetemp=build/pytest-$$backend \
			tests/kerasnorm > build/test-$$backend.log 2>&1; echo $$? > build/test-$$backend.rc) & \
	done; \
	$(PY) -m pytest --durations=15; status=$$?; wait; \
	for backend in $(OTHER_BACKENDS); do \
		echo "== tests/kerasnorm under KERAS_BACKEND=$$backend (build/test-$$backend.log)"; \
		tail -n 12 build/test-$$backend.log; \
		test "$$(cat build/test-$$backend.rc)" = 0 || status=1; \
	done; \
	exit $$status

report: install
	$(PY) -m studies run --claims all --profile full --jobs $(JOBS) --results $(RESULTS)
	$(PY) -m studies report --results $(RESULTS) --out reports

quick: install
	$(PY) -m studies run --claims all --profile quick --jobs $(JOBS) --results reports/quick/results
	$(PY) -m studies report --results reports/quick/results --out reports/quick

bench: install
	$(PY) -m studies bench

docs: install
	$(PY) -m mkdocs build --strict --site-dir build/site

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
