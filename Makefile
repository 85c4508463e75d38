# make demo: set up .venv and run the default experiment into runs/demo/
# make test: set up .venv (with the test extra) and run the whole test suite and the notebooks
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_WORKERS ?= 2

.PHONY: demo test install clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m mtl_jax.main --config=mtl_jax/configs/synthetic.py --workdir=runs/demo

# The notebooks run headless (nbmake) in their small size, beside the tests.
test: install
	MTL_JAX_SMALL=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) --durations=30 \
	  --nbmake --nbmake-timeout=600 tests notebooks

clean:
	rm -rf $(VENV) runs *.egg-info
