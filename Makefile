# The two commands of a fresh machine:
#   make demo   set up, then run the main job: the four shared workflows on the shapes world's models
#   make test   set up and run every test tier in both test environments:
#               locked (ComfyUI 0.3.75, tested versions) and latest (ComfyUI 0.33.0, newest
#               versions the requirements allow; skipped, saying so, without ../shared),
#               then the Comfy ecosystem's registry checks
PYTHON := .venv/bin/python

.PHONY: demo test test-environments test-locked test-latest setup registry-checks

setup:
	bash scripts/setup_env.sh

demo: setup
	$(PYTHON) scripts/demo.py

test: test-environments registry-checks

# Both environments, side by side (scripts/run_tests.sh); test-locked or test-latest runs one.
test-environments:
	bash scripts/run_tests.sh locked latest $(PYTEST_ARGS)

test-locked:
	bash scripts/run_tests.sh locked $(PYTEST_ARGS)

test-latest:
	bash scripts/run_tests.sh latest $(PYTEST_ARGS)

# The Comfy ecosystem's own checks (comfy node validate, comfy-test lint, comfy-import-guard,
# comfy-lint, ComfyUI-Manager's security check), offline, in their own venv .venv-registry/
registry-checks: setup
	bash scripts/registry_checks.sh $(REGISTRY_COMFYUI_DIRS)
