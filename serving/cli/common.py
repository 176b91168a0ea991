"""What every CLI command shares: how a failure is reported, where the real metrics live."""

from __future__ import annotations

from pathlib import Path

import typer

#: the real server metrics beside the repository (``../shared/data/smd-dev``)
SMD_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "smd-dev"


def fail(message: str) -> None:
    """Print a clear error and exit non-zero (2): the scheduled job's runner sees it failed."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code=2)


ENGINE_HELP = ("Where series are fitted: 'local' (a process pool of --n-jobs) or 'ray' "
               "(the cluster at RAY_ADDRESS, else a local Ray of --n-jobs CPUs).")
def pairs(values: list[str], option: str, form: str) -> dict[str, str]:
    """``KEY=VALUE`` option values as a mapping; a clear error for one that is not of that form."""
    out = {}
    for value in values:
        key, sep, to = value.partition("=")
        if not sep or not key or not to:
            fail(f"{option} takes {form}, got {value!r}")
        out[key] = to
    return out


KEEP_FIRING_HELP = "The alert rule's keep_firing_for, minutes."
FOR_CHOICES_HELP = ("The alert rule's `for` durations (minutes, comma-separated) the replay "
                    "chooses from with the alarm level.")


def alert_rule(keep_firing_minutes: float, for_choices: str):
    """The alert rule from its CLI options; a clear error for a malformed list."""
    from training.threshold import AlertRule

    try:
        fors = tuple(float(f) for f in for_choices.split(",") if f.strip())
    except ValueError as exc:
        fail(f"--for-choices takes minutes separated by commas, got {for_choices!r} ({exc})")
    if any(f < 0 for f in fors):
        fail(f"--for-choices must not be negative, got {for_choices!r}")
    try:
        return AlertRule(keep_firing_minutes=keep_firing_minutes, for_choices=fors)
    except ValueError as exc:
        fail(f"--keep-firing-minutes: {exc}")
