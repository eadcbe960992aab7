# Two commands do everything on a fresh machine with Python 3.11:
#   make test     install into .venv, then run the test suite
#   make report   install into .venv, then run the full study and write reports/
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
# Where `make report` keeps its runs. The committed ones are reused (finished runs are
# skipped); `make report RESULTS=reports/rerun` trains the whole study anew.
RESULTS ?= reports/results

.PHONY: install test report quick bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,ray]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest

report: install
	$(PY) -m studies run --claims all --profile full --jobs $(JOBS) --results $(RESULTS)
	$(PY) -m studies report --results $(RESULTS) --out reports

quick: install
	$(PY) -m studies run --claims all --profile quick --jobs $(JOBS) --results reports/quick/results
	$(PY) -m studies report --results reports/quick/results --out reports/quick

bench: install
	$(PY) -m studies bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
