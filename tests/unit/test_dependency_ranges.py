"""Declared ranges are tested ranges: each runtime requirement's lower bound is the version
the locked environment pins, and each test environment runs the bound it stands for."""

import os
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from pip_inputs import package_name

REPO = Path(__file__).resolve().parents[2]
RANGE = re.compile(r"^([A-Za-z0-9._-]+)>=([0-9][^,]*),<=([0-9].*)$")


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


RUNTIME = _lines(REPO / "requirements.txt")
LOCKED = dict(line.split("==") for line in _lines(REPO / "requirements" / "constraints.txt"))


@pytest.mark.parametrize("requirement", RUNTIME)
def test_each_runtime_requirement_has_a_tested_lower_and_upper_bound(requirement):
    match = RANGE.match(requirement)
    assert match, f"{requirement!r} must read NAME>=LOWER,<=UPPER"
    name, lower, upper = match.groups()
    locked = {package_name(key): value for key, value in LOCKED.items()}
    assert locked.get(package_name(name)) == lower, "the locked environment must pin the lower bound"
    environment = os.environ.get("M2CHAT_TEST_ENV")  # set by scripts/run_tests.sh
    if environment in ("locked", "latest"):
        assert version(name) == {"locked": lower, "latest": upper}[environment]


def test_torch_is_left_to_comfyui():
    assert not any(package_name(RANGE.match(line).group(1)).startswith("torch") for line in RUNTIME)
