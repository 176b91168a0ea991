"""The Kubernetes manifests parse and say what the scheduled job relies on."""

from pathlib import Path

import yaml

from serving.cli.registry import EXIT_BUSY, EXIT_FAILED, EXIT_KEPT

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def test_retrain_cronjob_forbids_concurrency_and_runs_retrain():
    (doc,) = list(yaml.safe_load_all((K8S / "retrain-cronjob.yaml").read_text()))
    assert doc["apiVersion"] == "batch/v1" and doc["kind"] == "CronJob"
    spec = doc["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5
    job = spec["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy needs it
    (container,) = pod["containers"]
    assert container["command"][:2] == ["prealert", "retrain"]
    env = {e["name"] for e in container["env"]}
    assert {"MLFLOW_TRACKING_URI", "PREALERT_LOCK_FILE"} <= env
    # kept champion and lock held end the Job; a failure is retried
    (stop,) = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert stop["onExitCodes"]["containerName"] == container["name"]
    assert set(stop["onExitCodes"]["values"]) == {EXIT_KEPT, EXIT_BUSY}
    assert EXIT_FAILED not in stop["onExitCodes"]["values"] and job["backoffLimit"] >= 1
    assert job["activeDeadlineSeconds"] < 6 * 3600  # finishes before its lock counts as stale
