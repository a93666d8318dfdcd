"""Build hook: the agent desktop's CometD JavaScript client goes into every built copy.

Everything else about the distribution is in pyproject.toml. The desktop page (channels/desktop/static) is
ordinary package data; the official CometD client it loads is not in the repository: it comes from the npm
package `cometd` pinned by channels/desktop/package-lock.json. `build_py` copies that package's modules and
LICENSE into the build as channels/desktop/vendor/cometd/, taking them from

1. channels/desktop/node_modules/cometd (a checkout after `npm ci --prefix channels/desktop`), else
2. channels/desktop/vendor/cometd (an unpacked sdist: `sdist` puts them there), else
3. running `npm ci --prefix channels/desktop` when npm is on PATH;

and when none works it builds without them and warns: the broker then answers `/` with 503 and logs how
to fix it. An editable install (`pip install -e .`) copies nothing: the broker serves node_modules in place.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

DESKTOP = Path("channels") / "desktop"
NODE_PACKAGE = DESKTOP / "node_modules" / "cometd"
VENDOR = DESKTOP / "vendor" / "cometd"  # where the installed package serves it from (channels/desktop/__init__.py)


def _warn(message: str) -> None:
    # stderr with a banner: pip shows a build's output only with -v, but a failed hook must not go unnoticed.
    print(f"\nWARNING: cometd-broker build: {message}\n", file=sys.stderr, flush=True)


def _client_files(folder: Path) -> list[Path]:
    """The files of the npm package a browser loads (its ES modules) and its LICENSE."""
    return sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix == ".js" or p.name in ("LICENSE",
                                                                                                  "package.json")))


def _has_client(folder: Path) -> bool:
    return (folder / "cometd.js").is_file() and (folder / "AckExtension.js").is_file()


def _npm_ci(root: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        return
    command = [npm, "ci", "--prefix", str(root / DESKTOP), "--no-audit", "--no-fund"]
    print("cometd-broker build: " + " ".join(command), file=sys.stderr, flush=True)
    result = subprocess.run(command, check=False, stdout=sys.stderr)
    if result.returncode != 0:
        _warn(f"`npm ci --prefix {DESKTOP}` failed with exit code {result.returncode}")


def find_cometd_client(root: Path) -> Path | None:
    """The folder to copy the CometD client from, installing it with npm when needed; None when impossible."""
    for folder in (root / NODE_PACKAGE, root / VENDOR):
        if _has_client(folder):
            return folder
    if (root / DESKTOP / "package-lock.json").is_file():
        _npm_ci(root)
        if _has_client(root / NODE_PACKAGE):
            return root / NODE_PACKAGE
    why = "npm is not on PATH" if shutil.which("npm") is None else "npm could not install it"
    _warn(f"the agent desktop's CometD client is missing from this build ({why}): an installation from it "
          f"answers / with 503. Run `npm ci --prefix {DESKTOP}` (Node >= 20) and build again.")
    return None


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the checkout is served in place, node_modules included
        source = find_cometd_client(Path.cwd())
        if source is None:
            return
        target = Path(self.build_lib) / VENDOR
        if source.resolve() == target.resolve():
            return
        target.mkdir(parents=True, exist_ok=True)
        for path in _client_files(source):
            self.copy_file(str(path), str(target / path.name))


class Sdist(sdist):
    """The sdist carries the client too, so a wheel built from it needs neither npm nor the network."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        source = find_cometd_client(Path.cwd())
        if source is None:
            return
        target = Path(base_dir) / VENDOR
        target.mkdir(parents=True, exist_ok=True)
        for path in _client_files(source):
            shutil.copyfile(path, target / path.name)


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
