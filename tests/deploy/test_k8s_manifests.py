"""The Kubernetes manifests under ``deploy/k8s``: parsed with PyYAML and checked against the app they run.

No cluster runs here (``kubectl --dry-run`` needs an API server), so the checks are structural: the
objects refer to each other by the right names and labels, the ports agree with BentoML's, and the
probe paths are routes of the service's app
(the tests that start a real ``bentoml serve`` wait on its ``/readyz`` through ``serving.server.wait_ready``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from bentoml._internal.configuration.containers import BentoMLContainer

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
GOLDEN = ROOT / "data" / "sample" / "golden_bundle"
NAME = "prealert-serve"


def load_all() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.y*ml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def the(kind: str, name: str = NAME) -> dict:
    found = [d for d in load_all() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container() -> dict:
    (c,) = the("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def test_every_manifest_is_a_named_kubernetes_object():
    docs = load_all()
    assert docs
    seen = set()
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{key} defined twice under deploy/k8s"
        seen.add(key)


def test_deployment_selects_its_own_pods_and_rolls_without_losing_capacity():
    spec = the("Deployment")["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_container_port_is_bentomls_and_the_service_routes_to_it():
    port = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert port["http"] == BentoMLContainer.http.port.get() == 3000
    service = the("Service")["spec"]
    pod_labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    (sport,) = service["ports"]
    assert sport["targetPort"] in (port["http"], "http")


def test_probes_use_the_named_port_and_the_real_health_paths():
    c = container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in {p["name"] for p in c["ports"]} | {3000}
    # a 10,000-series bundle took 204 s to load (bench/bundle_bench.py): the startup probe must allow
    # that with room to spare before liveness kills the pod
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 2 * 204


def test_env_names_the_registry_and_an_optional_token_secret():
    env = {e["name"]: e for e in container()["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http")
    ref = env["PREALERT_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True
    secret = the("Secret", ref["name"])
    assert ref["key"] in secret["stringData"]


def test_resources_are_set_so_the_hpa_can_measure_cpu():
    res = container()["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"]
    assert res["limits"]["memory"]


def test_hpa_scales_the_deployment_on_cpu():
    spec = the("HorizontalPodAutoscaler")["spec"]
    deployment = the("Deployment")
    ref = spec["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        deployment["apiVersion"], "Deployment", deployment["metadata"]["name"])
    (metric,) = spec["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]


@pytest.fixture(scope="module")
def app_paths() -> set[str]:
    """The routes of the ASGI app ``bentoml serve`` runs (built, not called: calling it registers
    prealert's Prometheus metrics, which a second app in the same test process could not)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PREALERT_BUNDLE", str(GOLDEN))
    from serving.service import PreAlert

    paths = {getattr(route, "path", None) for route in PreAlert.to_asgi().routes}
    mp.undo()
    return paths


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probe_paths_are_routes_of_the_service(app_paths, probe):
    path = container()[probe]["httpGet"]["path"]
    assert path in app_paths, f"{probe} {path} is not a route of serving.service:PreAlert"
    assert "/predict" in app_paths  # the app really is the service's
