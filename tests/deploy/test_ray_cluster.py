"""The documented Ray cluster: the KubeRay manifest parses, fits one task per CPU, and runs the Ray
and Python that uv.lock pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RAY = ROOT / "deploy" / "ray"


def _locked(name: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == name)


def _cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_the_raycluster_manifest_is_a_kuberay_cluster_of_prealert_workers():
    docs = list(yaml.safe_load_all((RAY / "raycluster.yaml").read_text()))
    assert len(docs) == 1
    cluster = docs[0]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["rayVersion"] == _locked("ray")
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "the head runs the driver, not fits"
    images = {c["image"] for c in head["template"]["spec"]["containers"]}
    total_cpus = 0.0
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        images.add(container["image"])
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits == requests, "guaranteed QoS: a fit is never throttled below its CPU"
        assert float(group["rayStartParams"]["num-cpus"]) == _cpus(limits["cpu"])
        total_cpus += group["maxReplicas"] * _cpus(limits["cpu"])
    assert len(images) == 1, "head and workers must run the same prealert build"
    assert total_cpus == 64


def test_the_image_is_rays_at_the_locked_version_with_prealert_from_the_lock():
    dockerfile = (RAY / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+)-py(\d)(\d+)$", dockerfile, re.M)
    assert base, "the image must start from rayproject/ray:<version>-py<python>"
    assert base.group(1) == _locked("ray")
    assert f"{base.group(2)}.{base.group(3)}" == "3.11"
    assert "--frozen" in dockerfile and "--extra ray" in dockerfile
