"""What the Comfy Registry receives: pyproject.toml's metadata (read as comfy-cli reads it)
and the file list of the zip that `comfy node publish` uploads.

scripts/registry_checks.sh runs the real tools (comfy node validate, comfy node pack) on
top of these; these tests need only git and the project venv."""

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from publish_files import PublishListError, publish_files
from sync_pyproject import RequirementsError, requirement_lines, sync

REPO = Path(__file__).resolve().parents[2]
# What a ComfyUI user needs, and nothing else, at the top of the published zip.
PUBLISHED_TOP_LEVEL = {"__init__.py", "nodes", "m2chat_core", "web", "workflows", "README.md", "LICENSE",
                       "CHANGELOG.md", "pyproject.toml", "requirements.txt", "comfy-test.toml"}
DEVELOPMENT_ONLY = ("tests", "train", "bench", "scripts", "requirements", ".ci")


def _pyproject(root: Path = REPO) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))


def test_pyproject_dependencies_are_requirements_txt():
    declared = _pyproject()["project"]["dependencies"]
    assert declared == requirement_lines(REPO / "requirements.txt"), (
        "pyproject.toml's [project].dependencies (what the Comfy Registry publishes) differ from "
        "requirements.txt: run `.venv/bin/python scripts/sync_pyproject.py` and commit both files.")
    assert any(line.startswith("transformers") for line in declared)


def test_sync_writes_requirements_into_a_static_dependency_list(tmp_path):
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "requirements.txt").write_text(
        "# a comment\ntorch>=2.4  # inline comment\n\n"
        'tomli>=2; python_version < "3.11"\neinops>=0.8\n')
    assert sync(tmp_path) is True
    assert _pyproject(tmp_path)["project"]["dependencies"] == [
        "torch>=2.4", 'tomli>=2; python_version < "3.11"', "einops>=0.8"]
    before = (tmp_path / "pyproject.toml").read_text()
    assert sync(tmp_path) is False and (tmp_path / "pyproject.toml").read_text() == before
    assert _pyproject(tmp_path)["tool"]["comfy"] == _pyproject()["tool"]["comfy"]  # the rest is kept


def test_sync_refuses_pip_options_that_pyproject_cannot_hold(tmp_path):
    (tmp_path / "requirements.txt").write_text("torch>=2.4\n--extra-index-url https://example.invalid\n")
    with pytest.raises(RequirementsError, match=r"requirements.txt:2: pip option '--extra-index-url"):
        requirement_lines(tmp_path / "requirements.txt")


def test_registry_fields_are_in_the_formats_comfy_cli_sends():
    project, comfy = _pyproject()["project"], _pyproject()["tool"]["comfy"]
    assert project["license"] == {"file": "LICENSE"}  # not a bare string: the registry docs' format
    licence = (REPO / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in licence and "Version 3, 29 June 2007" in licence
    urls = project["urls"]
    assert urls["Repository"].startswith("https://github.com/")  # required by the registry
    for key in ("Documentation", "Bug Tracker", "Issues"):
        assert urls[key].startswith(urls["Repository"])
    assert comfy["PublisherId"] and comfy["DisplayName"] and project["version"].count(".") == 2
    assert "dynamic" not in project  # comfy-cli reads only a static dependency list


def test_published_zip_holds_what_a_comfyui_user_needs_and_nothing_else():
    files = publish_files()
    assert {path.split("/")[0] for path in files} == PUBLISHED_TOP_LEVEL
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True,
                             check=True).stdout.split()
    for folder in ("nodes", "m2chat_core", "web", "workflows"):
        assert {p for p in tracked if p.startswith(folder + "/")} <= set(files), folder
    assert not [p for p in files if p.split("/")[0] in DEVELOPMENT_ONLY]
    assert "workflows/storytelling.json" in files and "workflows/storytelling.jpg" in files


def test_comfyignore_holds_plain_exclusions_only():
    # git's matcher (used above) and comfy-cli's (pathspec gitwildmatch) agree on these;
    # they differ on `!` re-includes below an excluded folder.
    patterns = [line.strip() for line in (REPO / ".comfyignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert patterns and not [p for p in patterns if p.startswith("!")]


def test_publish_list_refuses_includes_it_does_not_model(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "pyproject.toml").write_text('[tool.comfy]\nincludes = ["models"]\n')
    with pytest.raises(PublishListError, match="includes"):
        publish_files(tmp_path)
