"""The agent desktop is in every installed copy: the wheel carries its page and the official CometD JS client
(copied from the npm package at build time by setup.py), an installation with no source tree serves them,
and the Dockerfile's build stages produce such a wheel.

These build real wheels (pip, with build isolation as `pip wheel .` does) and so take about a minute. The
CometD client comes from channels/desktop/node_modules (`npm ci --prefix channels/desktop`, as .ci/run does)
or, when that is missing, from the `npm ci` the build runs itself; without npm they are skipped, except
under CI=true where they fail.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DESKTOP = ROOT / "channels" / "desktop"
# What a wheel's `pip wheel .` needs from a checkout (the Dockerfile's build stage copies the same).
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "cometd_broker", "channels")
PAGE = "channels/desktop/static/index.html"
CLIENT = "channels/desktop/vendor/cometd/cometd.js"


def need_npm_or_node_modules() -> None:
    if (DESKTOP / "node_modules" / "cometd" / "cometd.js").is_file() or shutil.which("npm"):
        return
    message = "neither channels/desktop/node_modules nor npm: the wheel would lack the CometD client"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def build_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment, with this interpreter's pip first on PATH and nothing pointing at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMETD_BROKER_DESKTOP_DIR")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


def run(command: list[str] | str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = subprocess.run(command, cwd=cwd, env=env or build_env(), shell=isinstance(command, str),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout[-6000:]}"
    return result.stdout


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel --no-deps .` of a copy of the checkout's sources (node_modules included when installed)."""
    need_npm_or_node_modules()
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "vendor"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(path, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(base / "wheels"), str(source)],
        cwd=base)
    [built] = (base / "wheels").glob("cometd_broker-*.whl")
    return built


def test_the_wheel_carries_the_page_the_cometd_client_and_the_license(wheel: Path):
    names = wheel_names(wheel)
    static = {n for n in names if n.startswith("channels/desktop/static/")}
    assert static == {f"channels/desktop/static/{p.name}" for p in (DESKTOP / "static").iterdir() if p.is_file()}
    vendor = {n.rsplit("/", 1)[1] for n in names if n.startswith("channels/desktop/vendor/cometd/")}
    assert {"cometd.js", "AckExtension.js", "Client.js", "LICENSE"} <= vendor
    # The checkout-only files stay out: no node_modules, no npm manifest, no TypeScript declarations.
    assert not [n for n in names if "node_modules" in n or n.endswith((".d.ts", "desktop/package.json"))]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata


# ---- a fresh virtual environment with no source tree on its path


@dataclass
class Installed:
    python: Path
    script: Path
    home: Path  # an empty working directory: nothing of the checkout is importable from it


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel installed into a new venv. Its dependencies are this environment's, made visible through a
    .pth of links to every installed distribution except cometd-broker itself (an editable install here,
    which must not shadow the wheel); so no index is asked, and `pip install --no-index` still checks that
    every declared dependency is satisfied."""
    base = tmp_path_factory.mktemp("venv")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base)
    python = venv / "bin" / "python"
    deps = base / "deps"
    deps.mkdir()
    here = Path(sysconfig.get_paths()["purelib"])
    for entry in here.iterdir():
        name = entry.name.lower()
        if (name.startswith(("cometd_broker", "__editable__", "channels", "_distutils_hack"))
                or name.endswith(".pth") or name == "__pycache__"):
            continue
        (deps / entry.name).symlink_to(entry)
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base)
    Path(purelib.strip(), "zz-test-dependencies.pth").write_text(f"{deps}\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
         "--find-links", str(wheel.parent), "cometd-broker"], cwd=base)
    home = base / "home"
    home.mkdir()
    return Installed(python, venv / "bin" / "cometd-broker", home)


def test_the_installed_packages_are_the_wheels_not_the_checkout(installed: Installed):
    out = run([str(installed.python), "-c",
               "import channels, channels.desktop as d, cometd_broker; "
               "print(channels.__file__); print(cometd_broker.__file__); print(d.default_desktop_dir())"],
              cwd=installed.home)
    venv = installed.python.parent.parent
    channels_file, broker_file, desktop_dir = out.split()
    assert Path(channels_file).is_relative_to(venv), out
    assert Path(broker_file).is_relative_to(venv), out
    assert Path(desktop_dir).is_relative_to(venv), out
    assert not Path(channels_file).is_relative_to(ROOT)


@pytest.fixture(scope="module")
def demo(installed: Installed) -> Iterator[tuple[str, Path]]:
    """`cometd-broker serve --demo` of the installed copy on a free port; (base URL, its log file)."""
    port = free_port()
    log_path = installed.home / "serve.log"
    env = build_env({"COMETD_BROKER_EVENT_LOG": "memory:"})
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([str(installed.script), "serve", "--demo", "--host", "127.0.0.1",
                                    "--port", str(port), "--state-db", ":memory:"],
                                   cwd=installed.home, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in log_path.read_text(errors="replace"):
            assert process.poll() is None, f"the installed broker exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"the installed broker did not start:\n{log_path.read_text()}"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get_content_type(), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), error.read().decode(errors="replace")


def test_the_installed_copy_serves_the_desktop_and_its_cometd_client(demo: tuple[str, Path]):
    base, log_path = demo
    status, kind, body = get(base + "/")
    assert (status, kind) == (200, "text/html"), body
    assert '<script type="module" src="/desktop/main.js">' in body
    status, kind, body = get(base + "/desktop/main.js")
    assert status == 200 and kind in ("application/javascript", "text/javascript")
    status, kind, body = get(base + "/desktop/vendor/cometd/cometd.js")
    assert status == 200 and kind in ("application/javascript", "text/javascript")
    assert 'from "./Client.js"' in body  # the npm package's entry module
    assert get(base + "/desktop/vendor/cometd/AckExtension.js")[0] == 200
    log = log_path.read_text(errors="replace")
    base_desktop = None
    for line in log.splitlines():
        assert " WARNING " not in line, log
        if "agent desktop at / (from " in line:
            base_desktop = line.split("(from ", 1)[1].rstrip(")")
    assert base_desktop is not None, log
    venv_desktop = Path(base_desktop)  # the installed package's folder, with the client the build put there
    assert not venv_desktop.is_relative_to(ROOT), log
    assert (venv_desktop / "vendor" / "cometd" / "cometd.js").is_file()


# ---- the Dockerfile's build stages, replayed here


def read_dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception `!`, regex of the path) per line, as Docker matches them (Go filepath.Match plus **)."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negate, re.compile(regex + "$")))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching line decides, and a path under an excluded folder is excluded."""
    parts = relative.split("/")
    result = False
    for depth in range(1, len(parts) + 1):
        prefix = "/".join(parts[:depth])
        for negate, regex in rules:
            if regex.match(prefix):
                result = not negate
        if result:
            return True
    return result


def docker_context(destination: Path) -> Path:
    """The build context the Docker daemon would get: the checkout less what .dockerignore excludes."""
    rules = read_dockerignore()
    for folder, dirs, files in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT)
        dirs[:] = [d for d in dirs if not ignored((relative / d).as_posix(), rules)]
        for name in files:
            path = (relative / name).as_posix()
            if not ignored(path, rules):
                (destination / relative).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder) / name, destination / relative / name)
    return destination


@dataclass
class Stage:
    name: str
    image: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # (instruction, arguments)


def dockerfile_stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0]))
        elif stages:
            stages[-1].steps.append((instruction, arguments.strip()))
    return stages


HOST_DIRS = {"usr", "bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "lib", "lib64", "opt", "var", "root",
             "home", "run"}


class Replay:
    """Each stage's filesystem is a folder; absolute paths of the Dockerfile (/src, /wheels) map into it."""

    def __init__(self, base: Path, context: Path) -> None:
        self.base = base
        self.context = context
        self.roots: dict[str, Path] = {}

    def path(self, stage: str, absolute: str) -> Path:
        return self.roots[stage] / absolute.lstrip("/")

    def map_command(self, stage: str, command: str) -> str:
        def replace(match: re.Match[str]) -> str:
            first = match.group(1).lstrip("/").split("/", 1)[0]
            return match.group(1) if first in HOST_DIRS else str(self.path(stage, match.group(1)))

        return re.sub(r"(?<![\w./-])(/[\w.\-/]+)", replace, command)

    def run_stage(self, stage: Stage, rewrite_run=lambda command: command) -> None:
        root = self.base / f"stage-{stage.name}"
        root.mkdir()
        self.roots[stage.name] = root
        workdir = "/"
        env: dict[str, str] = {}
        for instruction, arguments in stage.steps:
            if instruction == "WORKDIR":
                workdir = arguments if arguments.startswith("/") else f"{workdir.rstrip('/')}/{arguments}"
                self.path(stage.name, workdir).mkdir(parents=True, exist_ok=True)
            elif instruction == "ENV":
                env.update(word.split("=", 1) for word in shlex.split(arguments))
            elif instruction == "COPY":
                words = shlex.split(arguments)
                origin = self.context
                flags = [w for w in words if w.startswith("--")]
                for flag in flags:
                    if flag.startswith("--from="):
                        origin = self.roots[flag.split("=", 1)[1]]
                    else:
                        raise AssertionError(f"the replay does not know COPY {flag}")
                *sources, destination = [w for w in words if not w.startswith("--")]
                target = destination if destination.startswith("/") else f"{workdir.rstrip('/')}/{destination}"
                target_path = self.path(stage.name, target)
                for source in sources:
                    from_path = origin / source.lstrip("/")
                    assert from_path.exists(), f"COPY {source}: not in the {'stage' if flags else 'context'}"
                    if from_path.is_dir():
                        shutil.copytree(from_path, target_path, dirs_exist_ok=True)
                    elif target.endswith("/") or len(sources) > 1:
                        target_path.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(from_path, target_path / from_path.name)
                    else:
                        target_path.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(from_path, target_path)
            elif instruction == "RUN":
                assert not arguments.startswith("--"), f"the replay does not know RUN {arguments.split()[0]}"
                command = self.map_command(stage.name, rewrite_run(arguments))
                run(["bash", "-euc", command], cwd=self.path(stage.name, workdir), env=build_env(env), timeout=600)
            elif instruction in ("ARG", "LABEL", "EXPOSE", "VOLUME", "USER", "HEALTHCHECK", "CMD", "ENTRYPOINT"):
                continue
            else:
                raise AssertionError(f"the replay does not know {instruction}")


def test_the_dockerfile_builds_a_wheel_with_the_desktop(tmp_path: Path):
    """Replays every stage before the runtime one (the desktop's `npm ci` with this machine's npm, the wheel
    build with this environment's pip) on exactly the context Docker would send; then the runtime stage
    must install from that wheel directory."""
    if shutil.which("npm") is None:
        if os.environ.get("CI"):
            pytest.fail("npm is needed to replay the Dockerfile's desktop stage")
        pytest.skip("npm is needed to replay the Dockerfile's desktop stage")
    context = docker_context(tmp_path / "context")
    assert not list(context.rglob("node_modules")), "the context must not carry a checkout's node_modules"
    assert not (context / "tests").exists() and not (context / ".git").exists()
    stages = dockerfile_stages()
    *builders, runtime = stages
    assert builders, "the Dockerfile has no build stage"

    def no_dependencies(command: str) -> str:
        # The dependencies' wheels are pip's ordinary work; only the project's own wheel is checked here.
        return re.sub(r"\bpip wheel\b", "pip wheel --no-deps", command)

    replay = Replay(tmp_path, context)
    for stage in builders:
        replay.run_stage(stage, no_dependencies)
    mounts = [a for i, a in runtime.steps if i == "RUN" and "--mount=" in a]
    assert mounts, "the runtime stage installs no wheels from a build stage"
    [wheels_source] = re.findall(r"--mount=type=bind,from=(\w+),source=(/\S+),target=\S+", mounts[0])
    stage, folder = wheels_source
    [built] = replay.path(stage, folder).glob("cometd_broker-*.whl")
    assert "cometd-broker[" in mounts[0]
    names = wheel_names(built)
    assert PAGE in names
    assert CLIENT in names
    assert "channels/desktop/vendor/cometd/AckExtension.js" in names


def test_a_build_without_npm_or_node_modules_warns_and_leaves_the_client_out(tmp_path: Path):
    """No npm on PATH and no node_modules: the wheel is built, says so loudly, and has the page only (the
    installed broker then answers / with 503 and logs how to fix it: tests/browser/test_desktop_serving.py)."""
    source = tmp_path / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "vendor", "node_modules"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(path, source / name)
    env = build_env()
    env["PATH"] = str(Path(sys.executable).parent)  # this interpreter's pip, and no npm
    out = run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--wheel-dir", str(tmp_path / "wheels"),
               str(source)], cwd=tmp_path, env=env)
    assert "WARNING: cometd-broker build: the agent desktop's CometD client is missing from this build " \
           "(npm is not on PATH)" in out
    [built] = (tmp_path / "wheels").glob("cometd_broker-*.whl")
    names = wheel_names(built)
    assert PAGE in names
    assert not [n for n in names if "/vendor/" in n]
