"""How far a training run is: a bar on the terminal and a ``series_done`` metric in its MLflow run."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from training.fanout import Progress


class ProgressBar:
    """A tqdm bar on stderr, made at the first report (when the total is known); silent off a TTY."""

    def __init__(self, desc: str = "series fitted"):
        self.desc, self._bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.desc, unit="series", file=sys.stderr, disable=None)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class MlflowProgress:
    """Log ``series_done`` (step: that count) and ``series_total`` to a run, every ``every_seconds``."""

    def __init__(self, client, run_id: str, every_seconds: float = 10.0):
        self.client, self.run_id, self.every_seconds = client, run_id, every_seconds
        self._last = float("-inf")

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.every_seconds:
            return
        if self._last == float("-inf"):
            self.client.log_metric(self.run_id, "series_total", total)
        self._last = now
        self.client.log_metric(self.run_id, "series_done", done, step=done)


def both(*callbacks: Progress) -> Progress:
    def report(done: int, total: int) -> None:
        for callback in callbacks:
            callback(done, total)

    return report


@contextmanager
def run_with_progress(every_seconds: float = 10.0) -> Iterator[Progress]:
    """Open the MLflow run before training so its progress shows there; report to it and a bar.

    The run's id goes into ``MLFLOW_RUN_ID``, so ``mlflow.start_run()`` in the registry resumes
    it. A failure inside marks it FAILED (and ``MLFLOW_RUN_ID`` is cleared either way).
    """
    from mlflow.entities import RunStatus

    from training.registry import EXPERIMENT, use_experiment

    client = use_experiment(EXPERIMENT)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    run = client.create_run(experiment.experiment_id)
    os.environ["MLFLOW_RUN_ID"] = run.info.run_id
    bar = ProgressBar()
    try:
        yield both(bar, MlflowProgress(client, run.info.run_id, every_seconds))
    except BaseException:
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    finally:
        bar.close()
        if os.environ.get("MLFLOW_RUN_ID") == run.info.run_id:
            del os.environ["MLFLOW_RUN_ID"]
