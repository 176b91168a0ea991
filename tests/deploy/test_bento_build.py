"""``bentoml build`` from the repository: the bento holds the service, its packages, the locked requirements.

``bentoml containerize`` needs a Docker (or BuildKit) engine, which the test machines do not run, so
the image itself is not built here; the Dockerfile BentoML generates is checked instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "deploy" / "bento" / "requirements.txt"
EXPORT_CMD = ["uv", "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes",
              "--no-annotate", "--no-header"]


def pins(text: str) -> dict[str, str]:
    """``name -> "name==version"`` for every pinned requirement of a requirements file (markers dropped:
    BentoML rewrites their spacing)."""
    found = {}
    for line in text.splitlines():
        line = line.split(";")[0].strip()
        if line and not line.startswith(("#", "-")) and "==" in line:
            name, pinned = (part.strip() for part in line.split("==", 1))
            found[name.lower()] = f"{name.lower()}=={pinned}"
    return found


def test_bentofile_names_the_service_and_the_locked_requirements():
    config = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert config["service"] == "serving.service:PreAlert"
    assert config["python"]["requirements_txt"] == "deploy/bento/requirements.txt"
    assert config["python"]["lock_packages"] is False
    assert config["docker"]["python_version"] == "3.11"
    assert pins(REQUIREMENTS.read_text())["bentoml"] == f"bentoml=={version('bentoml')}"


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH")
def test_requirements_are_the_lock_exported():
    """A changed ``uv.lock`` without a re-exported requirements file would ship other versions."""
    exported = subprocess.run(EXPORT_CMD, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert pins(exported) == pins(REQUIREMENTS.read_text()), (
        "deploy/bento/requirements.txt drifted from uv.lock; regenerate it with "
        f"`{' '.join(EXPORT_CMD)} -o deploy/bento/requirements.txt`")


@pytest.fixture(scope="module")
def bento(tmp_path_factory) -> Path:
    """The folder of a bento built from the repository into a temporary ``BENTOML_HOME``."""
    home = tmp_path_factory.mktemp("bentoml_home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("PREALERT_BUNDLE", None)
    done = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag", str(ROOT)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    tag = next(line for line in done.stdout.splitlines() if line.startswith("__tag__:"))
    name, ver = tag.removeprefix("__tag__:").split(":")
    folder = home / "bentos" / name / ver
    assert (folder / "bento.yaml").is_file(), f"no bento at {folder}"
    return folder


@pytest.mark.slow
def test_bento_holds_the_service_and_its_packages_only(bento):
    meta = yaml.safe_load((bento / "bento.yaml").read_text())
    assert meta["service"] == "serving.service:PreAlert"
    assert meta["name"] == "prealert"
    assert meta["services"][0]["config"]["traffic"]["timeout"] > 0
    routes = {r["route"] for r in meta["schema"]["routes"]}
    assert "/predict" in routes
    assert {e["name"] for e in meta["envs"]} >= {"BENTOML_DO_NOT_TRACK", "MLFLOW_HTTP_REQUEST_TIMEOUT"}

    src = bento / "src"
    files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    for module in ("serving/service.py", "serving/predictor.py", "serving/http_edge.py",
                   "serving/schemas.py", "training/bundle.py", "training/predict.py",
                   "training/forecast/forecaster.py", "features/schema.py", "features/build.py"):
        assert module in files, f"{module} missing from the bento"
    assert not {f for f in files if f.split("/")[0] in {"tests", "data", "mlflow", "bench", "reports"}}
    assert not {f for f in files if "__pycache__" in f or f.endswith(".pyc")}
    # every module of the three packages made it in (nothing left out by the include patterns)
    for package in ("serving", "training", "features"):
        expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")
                    if "__pycache__" not in p.parts}
        assert expected <= files, f"left out of the bento: {sorted(expected - files)}"


@pytest.mark.slow
def test_bento_requirements_are_the_lock(bento):
    shipped = pins((bento / "env" / "python" / "requirements.txt").read_text())
    assert pins(REQUIREMENTS.read_text()).items() <= shipped.items()
    for package in ("bentoml", "prophet", "polars", "numpy", "pydantic"):
        assert shipped[package] == f"{package}=={version(package)}", shipped[package]
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "python:3.11" in dockerfile


@pytest.mark.slow
def test_bento_source_imports_the_service(bento):
    """The bento's own ``src`` (not the repository) provides the service class."""
    probe = ("import serving.service as m, pathlib; print(pathlib.Path(m.__file__).resolve()); "
             "print(m.PreAlert.name)")
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", probe], cwd=bento / "src", env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    where, name = done.stdout.split()[-2:]
    assert Path(where) == (bento / "src" / "serving" / "service.py").resolve()
    assert name == "prealert"
