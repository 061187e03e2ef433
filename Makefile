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

# The Comfy ecosystem's own checks (comfy node validate, comfy-test lint, comfy-import-guard,
# comfy-lint, ComfyUI-Manager's security check), offline, in their own venv .venv-registry/
.PHONY: registry-checks
registry-checks: setup
	bash scripts/registry_checks.sh $(REGISTRY_COMFYUI_DIRS)
