"""Generate the seeded sample metric export and its ground truth.

Simulates two autoscaled JVM workloads (``portal-demo``, ``groupware-demo``) on three worker nodes
for 14 days at 1-minute resolution (2026-09-21 00:00 KST to 2026-10-05 00:00 KST), injects a heap
leak, a filling disk and a handful of incidents, computes the ground truth from the clean data,
then adds the dirt of real exports (gaps, duplicates, out-of-order rows, NaN) and writes a
hive-partitioned long-format Parquet export plus ``ground_truth.json``.

Run: ``uv run python data/sample/generate.py [--out data/sample] [--seed 7]``.
Deterministic: the same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import holidays
import numpy as np
import polars as pl
from scipy.signal import lfilter

from features.schema import EXPORT_SCHEMA, METRIC, METRICS, NODE, POD, SERVICE, TS, VALUE, series_id

# --- the simulated world ---------------------------------------------------------------------
KST_OFFSET = timedelta(hours=9)
START_KST = datetime(2026, 9, 21, 0, 0)  # Monday
DAYS = 14
N = DAYS * 1440
START_UTC = (START_KST - KST_OFFSET).replace(tzinfo=UTC)
NODES = ("worker-1", "worker-2", "worker-3")
MIN_PODS, MAX_PODS = 5, 10
POD_METRICS = (
    "jvm_heap_pct",
    "gc_time_pct",
    "cpu_pct",
    "mem_pct",
    "db_pool_pct",
    "apdex",
    "error_rate_pct",
    "response_time_ms",
    "tps",
)
NODE_METRICS = ("disk_pct",)
DECIMALS = {
    "jvm_heap_pct": 2,
    "gc_time_pct": 2,
    "cpu_pct": 2,
    "mem_pct": 2,
    "db_pool_pct": 2,
    "apdex": 3,
    "error_rate_pct": 3,
    "response_time_ms": 1,
    "tps": 2,
    "disk_pct": 3,
}
HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet Kubernetes uses for generated names

# target minutes the injected trends are tuned to reach (the real crossing is measured afterwards)
HEAP_TARGET_KST = datetime(2026, 10, 4, 9, 40)
DISK_TARGET_KST = datetime(2026, 10, 4, 16, 20)
DISK_ROTATE_FAIL_KST = datetime(2026, 10, 1, 3, 0)


def kst_minute(dt: datetime) -> int:
    return int((dt - START_KST).total_seconds() // 60)


def iso_utc(minute: int) -> str:
    return (START_UTC + timedelta(minutes=int(minute))).strftime("%Y-%m-%dT%H:%M:%SZ")


def kst_str(minute: int) -> str:
    return (START_KST + timedelta(minutes=int(minute))).strftime("%Y-%m-%d %H:%M KST")


@dataclass
class Workload:
    name: str
    peak_tps: float  # workload total TPS at load 1.0
    morning: float  # weight of the morning peak
    afternoon: float  # weight of the afternoon peak
    deploy_kst: datetime
    versions: tuple[str, str]  # pod-name prefix before / after the deployment
    load: np.ndarray = field(default=None, repr=False)
    n_pods: np.ndarray = field(default=None, repr=False)


@dataclass
class Pod:
    name: str
    workload: str
    node: str
    start: int  # first minute (inclusive)
    end: int  # last minute (exclusive)
    new_version: bool
    slot: int


@dataclass
class Incident:
    entity: str
    metrics: list[str]
    start_kst: datetime
    minutes: int
    kind: str
    description: str

    @property
    def start(self) -> int:
        return kst_minute(self.start_kst)

    @property
    def end(self) -> int:
        return self.start + self.minutes


INCIDENTS = [
    Incident(
        "groupware-demo",
        ["db_pool_pct", "response_time_ms", "apdex", "error_rate_pct"],
        datetime(2026, 9, 22, 10, 20),
        45,
        "db_slowdown",
        "Database slowdown at the Tuesday morning peak: connection pool saturates towards 85%, "
        "response time rises to ~2.5 s, APDEX falls to ~0.8 and errors rise to ~3%, together.",
    ),
    Incident(
        "portal-demo",
        ["cpu_pct", "response_time_ms"],
        datetime(2026, 9, 27, 2, 40),
        25,
        "cpu_spike",
        "Runaway batch thread at night (Sunday 02:40 KST): CPU jumps from ~10% to ~70% on every "
        "pod with almost no traffic; response time rises moderately.",
    ),
    Incident(
        "groupware-demo",
        ["gc_time_pct", "jvm_heap_pct", "cpu_pct", "response_time_ms", "apdex"],
        datetime(2026, 10, 1, 14, 5),
        30,
        "gc_storm",
        "GC storm: GC time share jumps to ~15%, heap stays flat around 80-83% (the GC sawtooth "
        "disappears), CPU and response time rise, APDEX dips.",
    ),
    Incident(
        "portal-demo",
        ["error_rate_pct", "apdex"],
        datetime(2026, 10, 2, 11, 10),
        12,
        "error_burst",
        "A downstream API returns HTTP 500 for 12 minutes: error rate ~4%, APDEX dips slightly; "
        "traffic and latency are otherwise normal.",
    ),
]

SURVEY = {
    "entity": "portal-demo",
    "kind": "survey_deadline",
    "start_kst": datetime(2026, 9, 29, 13, 0),
    "end_kst": datetime(2026, 9, 29, 18, 15),
    "description": "Survey submission deadline at 18:00 KST: portal traffic builds up through the "
    "afternoon to ~1.5x a normal peak, then collapses after the deadline (expected load, not an "
    "anomaly).",
}


# --- helpers ---------------------------------------------------------------------------------
def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def gauss(x, mu, sd):
    return np.exp(-0.5 * ((x - mu) / sd) ** 2)


def ar1(rng, n, phi, sd):
    """Stationary AR(1) noise with marginal standard deviation ``sd``."""
    e = rng.normal(0.0, sd * np.sqrt(1 - phi**2), n)
    return lfilter([1.0], [1.0, -phi], e)


def rand_hash(rng, k):
    return "".join(HASH_ALPHABET[i] for i in rng.integers(0, len(HASH_ALPHABET), k))


def ramp_mask(start, end, onset=3):
    """0..1 incident intensity over the grid, with short linear onset and recovery."""
    t = np.arange(N)
    up = np.clip((t - start + 1) / onset, 0, 1)
    down = np.clip((end - t) / onset, 0, 1)
    return np.where((t >= start) & (t < end), np.minimum(up, down), 0.0)


def softcap(x, cap=99.0, k=0.5):
    return cap - np.log1p(np.exp(k * (cap - x))) / k


# --- load and autoscaling --------------------------------------------------------------------
def calendar():
    days = [START_KST.date() + timedelta(days=d) for d in range(DAYS)]
    kr = holidays.KR(years=sorted({d.year for d in days}))
    off = np.array([d.weekday() >= 5 or d in kr for d in days])
    hol = {d.isoformat(): kr[d] for d in days if d in kr}
    return days, off, hol


def load_profile(rng, wl: Workload, off_days: np.ndarray) -> np.ndarray:
    t = np.arange(N)
    day = t // 1440
    h = (t % 1440) / 60.0
    envelope = sigmoid((h - 8.5) / 0.3) * (1 - sigmoid((h - 18.6) / 0.45))
    lunch = 1 - 0.38 * gauss(h, 12.45, 0.4)
    shape = (
        0.55
        + wl.morning * gauss(h, 10.0 if wl.morning > wl.afternoon else 10.6, 1.0)
        + wl.afternoon * gauss(h, 15.0, 1.2)
    )
    shape = shape / shape.max()
    work = envelope * shape * lunch
    evening = 0.06 * sigmoid((h - 18.0) / 0.5) * (1 - sigmoid((h - 22.0) / 0.6))
    daily = rng.normal(1.0, 0.06, DAYS)
    daily[0] *= 1.05  # Monday
    weekday_load = 0.05 + 0.95 * work * daily[day] + evening
    offday_load = 0.04 + 0.16 * work * daily[day] + 0.5 * evening
    load = np.where(off_days[day], offday_load, weekday_load)
    if wl.name == SURVEY["entity"]:
        s, e = kst_minute(SURVEY["start_kst"]), kst_minute(SURVEY["end_kst"])
        deadline = kst_minute(datetime(2026, 9, 29, 18, 0))
        x = np.clip((t - s) / (deadline - s), 0, 1)
        burst = np.where((t >= s) & (t < deadline), 0.55 * x**2, 0.0)
        burst += np.where(
            (t >= deadline) & (t < e), 0.55 * (1 - (t - deadline) / (e - deadline)), 0
        )
        load = load + burst
    noise = np.exp(ar1(rng, N, 0.97, 0.06) + rng.normal(0, 0.03, N))
    return load * noise


def hpa(tps_total: np.ndarray) -> np.ndarray:
    """HPA-like replica count: target 60% CPU (~10.2 TPS/pod), 1-min scale-up lag, 5-min
    scale-down stabilisation, bounds 5..10."""
    smooth = np.convolve(tps_total, np.ones(3) / 3, mode="full")[:N]
    desired = np.clip(np.ceil(smooth / 10.2 - 0.1), MIN_PODS, MAX_PODS).astype(int)
    pad = np.concatenate([np.full(5, MIN_PODS), desired])
    win = np.lib.stride_tricks.sliding_window_view(pad, 5)[:N]  # desired[t-5 .. t-1]
    return win.max(axis=1)


def make_pods(rng, wl: Workload) -> list[Pod]:
    dep = kst_minute(wl.deploy_kst)
    pods = []
    for slot in range(MAX_PODS):
        active = wl.n_pods > slot
        switch = dep + 2 * slot  # rolling update: one pod every 2 minutes
        edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(int), [0]])))
        for s, e in zip(edges[::2], edges[1::2], strict=True):
            bounds = [s, e]
            if s < switch < e:
                bounds = [s, switch, e]
            for a, b in zip(bounds[:-1], bounds[1:], strict=False):
                new = a >= switch
                prefix = wl.versions[1 if new else 0]
                pods.append(
                    Pod(
                        name=f"{prefix}-{rand_hash(rng, 5)}",
                        workload=wl.name,
                        node=NODES[rng.integers(0, len(NODES))],
                        start=int(a),
                        end=int(b),
                        new_version=bool(new),
                        slot=slot,
                    )
                )
    return pods


# --- per-pod metrics -------------------------------------------------------------------------
LEAK_TAU_H = 20.0
AMP0 = 22.0  # GC sawtooth amplitude of a healthy pod (%-points)


def gc_amp(leak):
    # as old gen fills, each GC reclaims less: the sawtooth flattens
    return AMP0 * np.exp(-leak / 10.0)


def heap_floor_base(load, pod_off, new_version, workload):
    step = 6.0 if (workload == "portal-demo" and new_version) else 0.0
    return 26.0 + pod_off + 10.0 * load + step


def solve_leak_scale(wl: Workload, pods: list[Pod], pod_offs: dict[str, float]) -> float:
    """Scale of the exponential leak so the expected portal heap mean reaches 90% at target."""
    tgt = kst_minute(HEAP_TARGET_KST)
    present = [p for p in pods if p.start <= tgt < p.end]
    base = np.mean(
        [heap_floor_base(wl.load[tgt], pod_offs[p.name], p.new_version, wl.name) for p in present]
    )

    def expected(leak_long):
        vals = []
        for p in present:
            age_h = (tgt - p.start) / 60.0
            long_age_h = (tgt - min(q.start for q in present)) / 60.0
            lk = leak_long * np.expm1(age_h / LEAK_TAU_H) / np.expm1(long_age_h / LEAK_TAU_H)
            vals.append(softcap(base + lk + gc_amp(lk) / 2))
        return np.mean(vals)

    lo, hi = 0.0, 80.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected(mid) < 90.0 else (lo, mid)
    long_age_h = (tgt - min(q.start for q in present)) / 60.0
    return lo / np.expm1(long_age_h / LEAK_TAU_H)


def simulate_pod(
    rng, p: Pod, wl: Workload, pod_off: float, leak_scale: float, restarts: list
) -> dict:
    sl = slice(p.start, p.end)
    n = p.end - p.start
    t = np.arange(p.start, p.end)
    load = wl.load[sl]
    tps = wl.load[sl] * wl.peak_tps / wl.n_pods[sl] * np.exp(ar1(rng, n, 0.8, 0.06))
    tps = np.maximum(tps, 0.0)
    inc = {i.kind: ramp_mask(i.start, i.end)[sl] for i in INCIDENTS if i.entity == wl.name}
    gc_storm = inc.get("gc_storm", np.zeros(n))
    db = inc.get("db_slowdown", np.zeros(n))
    cpu_sp = inc.get("cpu_spike", np.zeros(n))
    err_b = inc.get("error_burst", np.zeros(n))

    # heap: floor (+ leak) + GC sawtooth driven by the allocation rate
    if wl.name == "portal-demo" and p.new_version:
        age = t - p.start
        leak = leak_scale * np.expm1(age / 60.0 / LEAK_TAU_H)
        # the JVM is OOM-killed once the leaked floor overshoots the heap; the container restarts
        # in place (same pod name, restartCount+1) and the leak starts again from zero
        oom_level = 103.0 + rng.uniform(0.0, 4.0)
        over = np.flatnonzero(heap_floor_base(load, pod_off, True, wl.name) + leak > oom_level)
        if over.size:
            r = int(over[0])
            age = np.where(np.arange(n) >= r, age - r, age)
            leak = leak_scale * np.expm1(age / 60.0 / LEAK_TAU_H)
            restarts.append(
                {
                    "entity": wl.name,
                    "pod": p.name,
                    "at": iso_utc(p.start + r),
                    "reason": "OOMKilled",
                }
            )
    else:
        leak = np.zeros(n)
    floor = heap_floor_base(load, pod_off, p.new_version, wl.name) + leak
    amp = gc_amp(leak)
    alloc = (0.25 + 0.55 * tps) * np.exp(rng.normal(0, 0.15, n))  # %-points per minute
    cycles = rng.uniform(0, 1) + np.cumsum(alloc / amp)  # a GC each time the headroom fills
    saw = amp * (cycles % 1.0)
    # measurement jitter shrinks with the sawtooth: a nearly full heap is flat
    heap = softcap(floor + saw) + rng.normal(0, 1, n) * (0.015 + 0.25 * amp / AMP0)
    storm_level = 81.0 + pod_off * 0.3 + rng.normal(0, 0.6, n)
    heap = heap * (1 - gc_storm) + storm_level * gc_storm
    heap = np.clip(heap, 0, 100)

    thrash = 11.0 * sigmoid((leak - 33.0) / 3.0)
    gc = 0.6 + 0.35 * tps + 0.8 * np.abs(rng.normal(0, 1, n)) + thrash + 13.0 * gc_storm
    gc = np.clip(gc, 0, 100)

    cpu = 4.0 + 5.5 * tps + rng.normal(0, 2.0, n) + 60.0 * cpu_sp + 12.0 * gc_storm + 0.6 * thrash
    cpu = np.clip(cpu, 0.5, 100)

    mem = 44.0 + 0.3 * floor.clip(max=100) + pod_off * 0.5 + rng.normal(0, 0.4, n)
    mem = np.clip(mem, 0, 100)

    db_pool = 9.0 + 3.4 * tps + rng.normal(0, 2.5, n) + 36.0 * db
    db_pool = np.clip(db_pool, 0, 100)

    rt_base = 470.0
    if wl.name == "groupware-demo" and p.new_version:
        rt_base = 330.0  # the new release is faster: a visible step at the deployment
    rt = (rt_base + 52.0 * tps) * np.exp(rng.normal(0, 0.08, n))
    rt *= 1 + 1.4 * db + 0.45 * gc_storm + 0.35 * cpu_sp + 0.25 * thrash / 11.0
    rt = np.maximum(rt, 5.0)

    apdex = 0.985 - 0.025 * (rt / 1000.0) ** 1.5 - 0.07 * db - 0.03 * gc_storm - 0.04 * err_b
    apdex = np.clip(apdex + rng.normal(0, 0.006, n), 0, 1)

    err = 0.05 + 0.04 * tps + rng.gamma(1.5, 0.08, n) + 3.2 * db + 3.8 * err_b
    err = np.clip(err, 0, 100)

    return {
        "jvm_heap_pct": heap,
        "gc_time_pct": gc,
        "cpu_pct": cpu,
        "mem_pct": mem,
        "db_pool_pct": db_pool,
        "apdex": apdex,
        "error_rate_pct": err,
        "response_time_ms": rt,
        "tps": tps,
    }


# --- node disks ------------------------------------------------------------------------------
def simulate_disks(rng, cluster_load: np.ndarray) -> dict[str, np.ndarray]:
    t = np.arange(N)
    h = (t % 1440) / 60.0
    rate = (0.04 + 0.45 * cluster_load) / 60.0  # %-points per minute written as logs
    rotate = (h == 3.0) & (t > 0)  # logrotate at 03:00 KST daily
    fail = kst_minute(DISK_ROTATE_FAIL_KST)
    tgt = kst_minute(DISK_TARGET_KST)
    out = {}
    for node, base in zip(NODES, (52.0, 58.0, 47.0), strict=True):
        r = rate * np.exp(rng.normal(0, 0.2, N))
        rot = rotate if node != "worker-2" else rotate & (t < fail)
        seg = np.cumsum(rot)  # accumulation restarts at every rotation
        acc = np.cumsum(r)
        acc_at_rot = np.concatenate([[0.0], acc[rot]])
        since = acc - acc_at_rot[seg]
        residual = 0.6 * seg / DAYS  # rotation keeps compressed archives: slow drift up
        level = base + residual + since
        if node == "worker-2":
            # logrotate broke: a debug logger keeps writing, accumulation no longer resets.
            # Scale the extra write rate so the disk reaches 90% at the target minute.
            extra_shape = np.where(t >= fail, 0.6 + cluster_load, 0.0) / 60.0
            extra_cum = np.cumsum(extra_shape)
            k = (90.0 - level[tgt]) / extra_cum[tgt]
            level = level + k * extra_cum
        out[node] = np.clip(level, 0, 100)  # write-rate noise only: monotone between rotations
    return out


# --- ground truth ----------------------------------------------------------------------------
def first_crossing(roll: np.ndarray, threshold: float, direction: str):
    hit = roll >= threshold if direction == "above" else roll <= threshold
    hit &= ~np.isnan(roll)
    idx = np.flatnonzero(hit)
    return (int(idx[0]) if idx.size else None), hit


def rollup(metric: str, total: np.ndarray, count: np.ndarray, mx: np.ndarray) -> np.ndarray:
    how = METRICS[metric].rollup
    with np.errstate(invalid="ignore", divide="ignore"):
        if how == "mean":
            return np.where(count > 0, total / count, np.nan)
        if how == "sum":
            return np.where(count > 0, total, np.nan)
        return np.where(count > 0, mx, np.nan)


# --- main ------------------------------------------------------------------------------------
def generate(out: Path, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    days, off_days, hol = calendar()

    portal_old, portal_new = 18, 19
    gw_old, gw_new = rand_hash(rng, 10), rand_hash(rng, 10)
    workloads = [
        Workload(
            "groupware-demo",
            peak_tps=92.0,
            morning=0.45,
            afternoon=0.12,
            deploy_kst=datetime(2026, 9, 23, 19, 30),
            versions=(f"groupware-demo-{gw_old}", f"groupware-demo-{gw_new}"),
        ),
        Workload(
            "portal-demo",
            peak_tps=86.0,
            morning=0.12,
            afternoon=0.45,
            deploy_kst=datetime(2026, 9, 30, 22, 0),
            versions=(f"portal-demo-{portal_old}", f"portal-demo-{portal_new}"),
        ),
    ]
    for wl in workloads:
        wl.load = load_profile(rng, wl, off_days)
        wl.n_pods = hpa(wl.load * wl.peak_tps)

    # columns accumulated as numpy code arrays
    pod_names: list[str | None] = [None]
    node_idx = {n: i for i, n in enumerate(NODES)}
    svc_names: list[str | None] = [None] + [w.name for w in workloads]
    all_metrics = list(POD_METRICS) + list(NODE_METRICS)
    metric_idx = {m: i for i, m in enumerate(all_metrics)}
    cols = {k: [] for k in ("t", "svc", "pod", "node", "metric", "value")}

    roll_acc = {}  # (entity, metric) -> (sum, count, max)
    restarts: list[dict] = []
    pod_info = []
    for wl in workloads:
        pods = make_pods(rng, wl)
        offs = {p.name: float(rng.normal(0, 2.0)) for p in pods}
        leak_scale = solve_leak_scale(wl, pods, offs) if wl.name == "portal-demo" else 0.0
        for m in POD_METRICS:
            roll_acc[(wl.name, m)] = (np.zeros(N), np.zeros(N), np.full(N, -np.inf))
        for p in pods:
            vals = simulate_pod(rng, p, wl, offs[p.name], leak_scale, restarts)
            pid = len(pod_names)
            pod_names.append(p.name)
            pod_info.append(p)
            n = p.end - p.start
            for m, v in vals.items():
                v = np.round(v, DECIMALS[m])
                s, c, mx = roll_acc[(wl.name, m)]
                s[p.start : p.end] += v
                c[p.start : p.end] += 1
                mx[p.start : p.end] = np.maximum(mx[p.start : p.end], v)
                cols["t"].append(np.arange(p.start, p.end, dtype=np.int32))
                cols["svc"].append(np.full(n, svc_names.index(wl.name), np.int8))
                cols["pod"].append(np.full(n, pid, np.int32))
                cols["node"].append(np.full(n, node_idx[p.node], np.int8))
                cols["metric"].append(np.full(n, metric_idx[m], np.int8))
                cols["value"].append(v)

    cluster_load = np.mean([w.load for w in workloads], axis=0)
    disks = simulate_disks(rng, cluster_load)
    for node, v in disks.items():
        v = np.round(v, DECIMALS["disk_pct"])
        roll_acc[(node, "disk_pct")] = (v.copy(), np.ones(N), v.copy())
        cols["t"].append(np.arange(N, dtype=np.int32))
        cols["svc"].append(np.zeros(N, np.int8))
        cols["pod"].append(np.zeros(N, np.int32))
        cols["node"].append(np.full(N, node_idx[node], np.int8))
        cols["metric"].append(np.full(N, metric_idx["disk_pct"], np.int8))
        cols["value"].append(v)

    # ground truth: first crossing of every rolled-up series on the clean data
    rollups = {}
    crossings = []
    for (entity, m), (s, c, mx) in roll_acc.items():
        spec = METRICS[m]
        roll = rollup(m, s, c, mx)
        rollups[(entity, m)] = roll
        first, hit = first_crossing(roll, spec.threshold, spec.direction)
        if first is None:
            continue
        run = int(np.argmin(hit[first:])) if not hit[first:].all() else N - first
        crossings.append(
            {
                "series_id": series_id(entity, m),
                "entity": entity,
                "metric": m,
                "threshold": spec.threshold,
                "direction": spec.direction,
                "rollup": spec.rollup,
                "crossed_at": iso_utc(first),
                "crossed_at_kst": kst_str(first),
                "minutes_at_or_beyond_after_crossing": run,
                "value_at_crossing": round(float(roll[first]), 3),
                "description": "",
            }
        )
    expected = {("portal-demo", "jvm_heap_pct"), ("worker-2", "disk_pct")}
    got = {(c["entity"], c["metric"]) for c in crossings}
    if got != expected:
        for (entity, m), roll in rollups.items():
            print(entity, m, np.nanmin(roll).round(3), np.nanmax(roll).round(3))
        raise RuntimeError(f"unexpected threshold crossings {got ^ expected}: retune the world")
    for c in crossings:
        if c["metric"] == "jvm_heap_pct":
            c["description"] = (
                "Slow heap leak introduced by portal-demo deployment 19 (2026-09-30 22:00 KST): "
                "the post-GC floor of the long-lived pods grows exponentially with pod age (time "
                "constant 20 h) while the GC sawtooth flattens; the workload mean heap crosses "
                "90% and keeps rising towards ~99% (GC thrashing: gc_time_pct and response time "
                "rise) until the pods are OOM-killed and restart one by one (see 'restarts')."
                " Heap-related alerting should fire before crossed_at."
            )
        else:
            c["description"] = (
                "Log rotation on worker-2 stops working at 2026-10-01 03:00 KST; logs accumulate "
                "(faster in office hours) until disk usage crosses 90%. worker-1 and worker-3 keep "
                "their daily 03:00 KST rotation sawtooth."
            )
    crossings.sort(key=lambda c: c["crossed_at"])
    short = [c["series_id"] for c in crossings if c["minutes_at_or_beyond_after_crossing"] < 20]
    if short:
        raise RuntimeError(f"crossing not clean (back below within 20 min): {short}")

    # --- assemble the clean frame ------------------------------------------------------------
    arr = {k: np.concatenate(v) for k, v in cols.items()}
    n_clean = arr["t"].size

    # --- dirt ----------------------------------------------------------------------------------
    keep = np.ones(n_clean, bool)
    protect = [kst_minute(datetime.fromisoformat(c["crossed_at_kst"][:16])) for c in crossings]

    def near_crossing(a, b):
        return any(a < x + 60 and b > x - 180 for x in protect)

    gaps = []
    long_pods = [i for i, p in enumerate(pod_info) if p.end - p.start > 2000]
    chosen = rng.choice(len(long_pods), 5, replace=False)
    for ci in chosen:
        p = pod_info[long_pods[ci]]
        pid = long_pods[ci] + 1
        for _ in range(20):
            length = int(rng.integers(5, 21))
            a = int(rng.integers(p.start + 60, p.end - 60 - length))
            if not near_crossing(a, a + length):
                break
        sel = (arr["pod"] == pid) & (arr["t"] >= a) & (arr["t"] < a + length)
        keep &= ~sel
        gaps.append(
            {
                "entity": p.workload,
                "pod": p.name,
                "start": iso_utc(a),
                "end": iso_utc(a + length),
                "minutes": length,
                "rows_removed": int(sel.sum()),
                "cause": "agent restart",
            }
        )
    node_gap_start = kst_minute(datetime(2026, 9, 28, 14, 10))
    sel = (
        (arr["metric"] == metric_idx["disk_pct"])
        & (arr["node"] == node_idx["worker-3"])
        & (arr["t"] >= node_gap_start)
        & (arr["t"] < node_gap_start + 63)
    )
    keep &= ~sel
    gaps.append(
        {
            "entity": "worker-3",
            "pod": None,
            "metric": "disk_pct",
            "start": iso_utc(node_gap_start),
            "end": iso_utc(node_gap_start + 63),
            "minutes": 63,
            "rows_removed": int(sel.sum()),
            "cause": "node exporter down",
        }
    )
    arr = {k: v[keep] for k, v in arr.items()}
    n = arr["t"].size
    order_key = np.lexsort((arr["metric"], arr["pod"], arr["node"], arr["t"])).argsort()
    order_key = order_key.astype(np.float64)
    rows_per_min = n / N

    n_dup = int(round(0.002 * n))
    n_near = int(round(0.0005 * n))
    dup_idx = rng.choice(n, n_dup + n_near, replace=False)
    near = dup_idx[n_dup:]  # the first n_dup are copied verbatim
    near_vals = arr["value"][near].copy()
    dec = np.array([DECIMALS[all_metrics[m]] for m in arr["metric"][near]])
    jitter = near_vals * rng.uniform(-0.02, 0.02, n_near)
    min_step = 10.0 ** (-dec) * np.where(rng.uniform(size=n_near) < 0.5, -1, 1)
    jitter = np.where(np.abs(jitter) < 10.0 ** (-dec), min_step, jitter)
    scale = 10.0**dec
    near_vals = np.round((near_vals + jitter) * scale) / scale
    upper = np.array([METRICS[all_metrics[m]].upper for m in arr["metric"][near]])
    near_vals = np.clip(near_vals, 0, upper)
    still_same = near_vals == arr["value"][near]
    near_vals[still_same] = np.round(near_vals[still_same] - 10.0 ** (-dec[still_same]), 6)

    dup_keys = order_key[dup_idx] + rng.uniform(0.5, 3 * rows_per_min, dup_idx.size)
    new = {k: np.concatenate([v, v[dup_idx]]) for k, v in arr.items()}
    new["value"][n + n_dup :] = near_vals
    keys = np.concatenate([order_key, dup_keys])

    # late / out-of-order rows: ~1% moved up to +-10 minutes from where they belong
    m_total = keys.size
    n_ooo = int(round(0.01 * m_total))
    ooo = rng.choice(m_total, n_ooo, replace=False)
    keys[ooo] += rng.uniform(-10, 10, n_ooo) * rows_per_min

    n_nan = 40
    nan_idx = rng.choice(m_total, n_nan, replace=False)
    new["value"][nan_idx] = np.nan

    order = np.argsort(keys, kind="stable")
    new = {k: v[order] for k, v in new.items()}

    # --- write ---------------------------------------------------------------------------------
    export = out / "export"
    if export.exists():
        shutil.rmtree(export)
    start_us = int(START_UTC.timestamp()) * 1_000_000
    ts_us = start_us + new["t"].astype(np.int64) * 60_000_000
    frame = pl.DataFrame(
        {
            TS: pl.Series(ts_us).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            SERVICE: pl.Series(svc_names, dtype=pl.String).gather(new["svc"]),
            POD: pl.Series(pod_names, dtype=pl.String).gather(new["pod"]),
            NODE: pl.Series(list(NODES), dtype=pl.String).gather(new["node"]),
            METRIC: pl.Series(all_metrics, dtype=pl.String).gather(new["metric"]),
            VALUE: pl.Series(new["value"], dtype=pl.Float64),
        }
    )
    assert frame.schema == pl.Schema(EXPORT_SCHEMA), frame.schema
    utc_day = (ts_us // 86_400_000_000).astype(np.int64)
    rows_per_day = {}
    for d in np.unique(utc_day):
        day_s = (date(1970, 1, 1) + timedelta(days=int(d))).isoformat()
        part = frame.filter(pl.Series(utc_day == d))
        path = export / f"date={day_s}" / "part-0.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        part.write_parquet(path, compression="zstd", compression_level=9, statistics=True)
        rows_per_day[day_s] = part.height

    deployments = [
        {
            "entity": wl.name,
            "kind": "DeploymentConfig" if wl.name == "portal-demo" else "Deployment",
            "from": wl.versions[0],
            "to": wl.versions[1],
            "start": iso_utc(kst_minute(wl.deploy_kst)),
            "end": iso_utc(kst_minute(wl.deploy_kst) + 2 * MAX_PODS),
            "description": (
                "Rolling update (one pod every 2 minutes). Heap baseline steps up ~6 %-points "
                "and a slow heap leak starts in the new pods."
                if wl.name == "portal-demo"
                else "Rolling update (one pod every 2 minutes). The new release is faster: "
                "response_time_ms baseline steps down ~140 ms."
            ),
        }
        for wl in workloads
    ]
    pods_per_wl = {
        wl.name: {
            "distinct_pods": sum(p.workload == wl.name for p in pod_info),
            "min_replicas": int(wl.n_pods.min()),
            "max_replicas": int(wl.n_pods.max()),
        }
        for wl in workloads
    }
    truth = {
        "seed": seed,
        "window": {"start": iso_utc(0), "end": iso_utc(N), "end_exclusive": True},
        "step": "1m",
        "timezone": "Asia/Seoul",
        "crossings": crossings,
        "anomalies": [
            {
                "entity": i.entity,
                "metrics": i.metrics,
                "start": iso_utc(i.start),
                "end": iso_utc(i.end),
                "kind": i.kind,
                "description": i.description,
            }
            for i in INCIDENTS
        ],
        "load_events": [
            {
                "entity": SURVEY["entity"],
                "kind": SURVEY["kind"],
                "start": iso_utc(kst_minute(SURVEY["start_kst"])),
                "end": iso_utc(kst_minute(SURVEY["end_kst"])),
                "description": SURVEY["description"],
            }
        ],
        "deployments": deployments,
        "restarts": sorted(restarts, key=lambda r: r["at"]),
        "holidays": [{"date": d, "name": name} for d, name in sorted(hol.items())],
        "workloads": pods_per_wl,
        "nodes": list(NODES),
        "dirt": {
            "gaps": gaps,
            "gap_rows_removed": int(sum(g["rows_removed"] for g in gaps)),
            "exact_duplicate_rows": n_dup,
            "near_duplicate_rows": n_near,
            "out_of_order_rows": n_ooo,
            "nan_values": n_nan,
            "rows_clean": int(n_clean),
            "rows_written": int(frame.height),
        },
        "rows_per_utc_day": rows_per_day,
    }
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=2, ensure_ascii=False) + "\n")
    return {"truth": truth, "rollups": rollups, "workloads": workloads}


def verify(out: Path, truth: dict) -> None:
    """Read the written (dirty) export back, clean it naively and re-derive the crossings."""
    lf = pl.scan_parquet(out / "export", hive_partitioning=True)
    raw = lf.collect()
    print(f"rows written: {raw.height:,}  columns: {raw.columns}")
    per_day = raw.group_by("date").len().sort("date")
    print(
        "rows per UTC day:", dict(zip(per_day["date"].cast(pl.String), per_day["len"], strict=True))
    )
    pods = (
        raw.filter(pl.col(POD).is_not_null())
        .group_by(SERVICE)
        .agg(pl.col(POD).n_unique().alias("distinct_pods"))
        .sort(SERVICE)
    )
    print(
        "distinct pods per workload:", dict(zip(pods[SERVICE], pods["distinct_pods"], strict=True))
    )
    keys = [TS, SERVICE, POD, NODE, METRIC]
    clean = (
        raw.drop("date")
        .filter(pl.col(VALUE).is_not_nan())
        .group_by(keys)
        .agg(pl.col(VALUE).first())
    )
    print(f"after dedupe / NaN drop: {clean.height:,} rows")
    for c in truth["crossings"]:
        spec = METRICS[c["metric"]]
        by = SERVICE if spec.level == "pod" else NODE
        agg = {"mean": pl.col(VALUE).mean(), "max": pl.col(VALUE).max(), "sum": pl.col(VALUE).sum()}
        roll = (
            clean.filter((pl.col(METRIC) == c["metric"]) & (pl.col(by) == c["entity"]))
            .group_by(TS)
            .agg(agg[spec.rollup])
            .sort(TS)
        )
        hit = (
            pl.col(VALUE) >= spec.threshold
            if spec.direction == "above"
            else pl.col(VALUE) <= spec.threshold
        )
        first = roll.filter(hit)[TS].min()
        truth_ts = datetime.fromisoformat(c["crossed_at"].replace("Z", "+00:00"))
        delta = (first - truth_ts).total_seconds() / 60
        print(
            f"  {c['series_id']}: truth {c['crossed_at']}  re-derived {first:%Y-%m-%dT%H:%MZ}  "
            f"diff {delta:+.0f} min"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-check", action="store_true", help="skip reading the export back")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    res = generate(args.out, args.seed)
    t = res["truth"]
    print(f"wrote {t['dirt']['rows_written']:,} rows to {args.out / 'export'}")
    for c in t["crossings"]:
        print(f"  crossing {c['series_id']}: {c['crossed_at']} ({c['crossed_at_kst']})")
    if not args.no_check:
        verify(args.out, t)


if __name__ == "__main__":
    main()
