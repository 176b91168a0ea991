"""Ephemeral pods -> the workloads that persist: pod-name shapes and the entity of a series."""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl

from features import schema as s

#: pod-name shapes, tried in order; the first capture group is the workload
POD_PATTERNS = (
    r"^(.+)-\d+-[a-z0-9]{5}$",  # OpenShift DeploymentConfig: <dc>-<deploy number>-<hash>
    r"^(.+)-[a-z0-9]{6,10}-[a-z0-9]{5}$",  # Kubernetes Deployment: <name>-<rs hash>-<pod hash>
    r"^(.+)-\d+$",  # StatefulSet: <name>-<ordinal>
)


def patterns_with(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """A config's own patterns first (they override), then the built-in shapes."""
    return (*extra, *POD_PATTERNS)


def workload_of(pod: pl.Expr, patterns: Sequence[str] = POD_PATTERNS) -> pl.Expr:
    """The persistent workload a pod belongs to, from its name; null when no shape matches."""
    return pl.coalesce(pod.str.extract(p, 1) for p in patterns)


def workload_of_pod(pod: str, patterns: Sequence[str] = POD_PATTERNS) -> str | None:
    """:func:`workload_of` for one pod name, for single requests."""
    for pattern in patterns:
        m = re.match(pattern, pod)
        if m:
            return m.group(1)
    return None


def entity_of(patterns: Sequence[str] = POD_PATTERNS) -> pl.Expr:
    """The entity a row's series belongs to: the service label, else the pod's workload, else
    the node -- but a pod whose name has no known shape never falls back to its node (that would
    mix pod data into node series), unless the metric is node-level."""
    pod, node = pl.col(s.POD), pl.col(s.NODE)
    node_level = pl.col(s.METRIC).is_in([m.name for m in s.METRICS.values() if m.level == "node"])
    return pl.coalesce(
        pl.col(s.SERVICE),
        workload_of(pod, patterns),
        pl.when(pod.is_null() | node_level).then(node),
    )


def with_entity(lf: pl.LazyFrame, patterns: Sequence[str] = POD_PATTERNS) -> pl.LazyFrame:
    """Add the ``entity`` column (see :func:`entity_of`)."""
    return lf.with_columns(entity_of(patterns).alias(s.ENTITY))
