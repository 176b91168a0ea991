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
TIMEZONE_HELP = ("Time zone of the daily and weekly shapes (an IANA name: Asia/Seoul, UTC, "
                 "Europe/Berlin, ...); recorded in the run and the bundle.")
HOLIDAYS_HELP = ("Public holidays treated as non-working days: a country code (KR, US, DE, ...) "
                 "or 'none'; recorded in the run and the bundle.")


def calendar(timezone: str, holidays: str) -> dict:
    """The forecaster's calendar settings from the CLI's options; a clear error for an unknown one."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    import holidays as calendars

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"--timezone {timezone!r} is not a time zone name (for example Asia/Seoul or UTC)")
    country = None if holidays.strip().lower() == "none" else holidays.strip().upper()
    if country is not None and country not in calendars.list_supported_countries():
        fail(f"--holidays {holidays!r} is not a country code the holidays library knows "
             "(for example KR, US, DE), nor 'none'")
    return {"timezone": timezone, "holidays_country": country}


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
