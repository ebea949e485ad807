"""``mailqueue rehearse``: run a scenario, write the report, exit non-zero on loss."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailqueue.cli._common import FiniteFloatRange
from mailqueue.errors import MailqueueError
from mailqueue.logs import configure_logging

if TYPE_CHECKING:
    from mailqueue.rehearsal.scenario import Scenario


@click.command(short_help="Replay a scenario file; write a report.")
@click.argument("scenario", metavar="SCENARIO")
@click.option("--speed", type=FiniteFloatRange(min=0, min_open=True),
              help="Simulated seconds per real second (default: the scenario's).")
@click.option("--seed", type=int, help="Seed for traffic and node faults (default: the "
              "scenario's).")
@click.option("--out", metavar="DIR", help="Report directory (default: var/rehearsal/NAME).")
@click.option("--workdir", metavar="DIR", help="Keep the queue and Maildirs here (default: a "
              "temporary directory, removed after).")
@click.option("--keep", is_flag=True, help="Keep the temporary work directory.")
@click.option("--profile", "profile_path", metavar="FILE", help="Replay this traffic profile "
              "(mailqueue traffic profile) instead of the scenario's traffic.")
@click.option("--scale", metavar="N", help="The profile's scale: 0.01 or 1/100 keeps one "
              "message in a hundred, 2 sends each twice (default: the scenario's, or 1).")
@click.option("--shift", metavar="week|TIME", help="The profile's shift: week (the same "
              "weekday and time of day) or the log time that plays at the scenario's start.")
def rehearse(scenario: str, speed: float | None, seed: int | None, out: str | None,
             workdir: str | None, keep: bool, profile_path: str | None, scale: str | None,
             shift: str | None) -> None:
    """Replay SCENARIO (a TOML file) over real SMTP on a scaled clock; write a report.

    Needs no config file: the scenario describes the server, its stores and its traffic
    (or --profile: traffic replayed from a traffic profile)."""
    sys.exit(run(scenario, speed, seed, out, workdir, keep, profile_path, scale, shift))


def run(scenario_path: str, speed: float | None, seed: int | None, out: str | None,
        workdir: str | None, keep: bool, profile: str | None = None,
        scale: str | None = None, shift: str | None = None) -> int:
    """Run ``scenario_path``; print the figures; the exit status (1 if lost or duplicated).

    The report and work directories (relative to the current directory) are checked
    before the rehearsal runs, so a path that cannot be written is one line at once rather
    than a failure after the whole rehearsal."""
    # Imported here, not at the top: every other command starts without loading them.
    from mailqueue.rehearsal.report import figures_text, write_report
    from mailqueue.rehearsal.runner import run_rehearsal
    from mailqueue.rehearsal.scenario import load_scenario
    from mailqueue.service.rehearsals import passed, temporary_workdir, writable_directories

    scenario = load_scenario(scenario_path)
    if profile or scale is not None or shift is not None:
        scenario = _with_profile(scenario, profile, scale, shift)
    target = Path(out or Path("var") / "rehearsal" / Path(scenario_path).stem).absolute()
    directories = {"--out" if out else "report directory (--out)": target}
    if workdir:
        directories["--workdir"] = Path(workdir).absolute()
    writable_directories(directories)
    work = directories.get("--workdir") or temporary_workdir()
    configure_logging("console", "warning")
    print(f"rehearsing {scenario.info.name} at {speed or scenario.info.speed:g}x "
          f"(work dir {work})", file=sys.stderr)
    try:
        obs = run_rehearsal(scenario, work, speed, seed)
        try:
            figures = write_report(obs, target)
        except OSError as exc:
            raise MailqueueError(f"cannot write the report to {target}: "
                                 f"{exc.strerror or exc}") from exc
    finally:
        if not workdir and not keep:
            shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(figures_text(figures))
    print(f"report: {target}/ (report.html, timeline.md, queue.png, series.csv, report.json)")
    return 0 if passed(figures) else 1


def _with_profile(scenario: Scenario, profile: str | None, scale: str | None,
                  shift: str | None) -> Scenario:
    """The scenario replaying ``--profile`` (or its own profile) at ``--scale``/``--shift``;
    a usage error naming the option."""
    from mailqueue.rehearsal.replay import with_profile

    if not profile and not isinstance(scenario.file.traffic.profile, str):
        raise click.UsageError("--scale and --shift apply to a traffic profile: give "
                               "--profile FILE (or [traffic] profile = \"FILE\")")
    try:
        return with_profile(scenario, profile, scale, shift)
    except ValueError as exc:
        key, _, reason = str(exc).partition(": ")
        raise click.UsageError(f"--{key.removeprefix('traffic.')}: {reason}") from None
