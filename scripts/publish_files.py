"""The files that `comfy node publish` zips for the Comfy Registry, listed the way
comfy-cli 1.23 builds the zip (comfy_cli/file_utils.py, zip_files): every file git tracks,
less those that match a pattern of .comfyignore (gitignore syntax, comment lines skipped),
plus the folders named in [tool.comfy].includes. .gitignore plays no part beyond what git
tracks. Here git's own matcher applies .comfyignore, which agrees with comfy-cli's
(pathspec's gitwildmatch) for plain exclusions; the tests keep .comfyignore to those.

    .venv/bin/python scripts/publish_files.py     # one path a line
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class PublishListError(RuntimeError):
    """The publish list cannot be computed the way comfy-cli would build it."""


def _git_files(root: Path, *args: str) -> set[str]:
    result = subprocess.run(["git", "-C", str(root), "ls-files", "-z", *args],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise PublishListError(f"git ls-files failed in {root} (comfy-cli zips git-tracked files, so "
                               f"publish from a git checkout): {result.stderr.strip()}")
    return {path for path in result.stdout.split("\0") if path}


def publish_files(root: Path = REPO) -> list[str]:
    """Sorted paths, relative to root with forward slashes, of the registry zip's files."""
    includes = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["comfy"].get(
        "includes", [])
    if includes:
        raise PublishListError(f"[tool.comfy].includes = {includes}: comfy-cli also zips those folders' "
                               "untracked files, which this list does not model yet; extend publish_files.")
    tracked = _git_files(root)
    ignore_file = root / ".comfyignore"
    ignored = _git_files(root, "--cached", "--ignored", f"--exclude-from={ignore_file}") \
        if ignore_file.is_file() else set()
    return sorted(tracked - ignored)


def main() -> int:
    try:
        print("\n".join(publish_files()))
    except PublishListError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
