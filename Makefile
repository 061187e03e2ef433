# The two commands of a fresh machine:
#   make demo   set up, then run the main job on the embedded tiny models
#   make test   set up (with Chromium for the browser tests), then run every test tier
PYTHON := .venv/bin/python

.PHONY: demo test setup setup-browser

setup:
	bash scripts/setup_env.sh

setup-browser:
	bash scripts/setup_env.sh --browser

demo: setup
	$(PYTHON) scripts/demo.py

test: setup-browser
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)
