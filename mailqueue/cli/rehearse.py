"""``mailqueue rehearse``: run a scenario, write the report, exit non-zero on loss."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import click

from mailqueue.cli._common import FiniteFloatRange
from mailqueue.errors import MailqueueError
from mailqueue.logs import configure_logging


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
def rehearse(scenario: str, speed: float | None, seed: int | None, out: str | None,
             workdir: str | None, keep: bool) -> None:
    """Replay SCENARIO (a TOML file) over real SMTP on a scaled clock; write a report.

    Needs no config file: the scenario describes the server, its stores and its traffic."""
    sys.exit(run(scenario, speed, seed, out, workdir, keep))


def run(scenario_path: str, speed: float | None, seed: int | None, out: str | None,
        workdir: str | None, keep: bool) -> int:
    """Run ``scenario_path``; print the figures; the exit status (1 if lost or duplicated).

    The report and work directories (relative to the current directory) are checked
    before the rehearsal runs, so a path that cannot be written is one line at once rather
    than a failure after the whole rehearsal."""
    # Imported here, not at the top: every other command starts without loading them.
    from mailqueue.rehearsal.report import figures_text, write_report
    from mailqueue.rehearsal.runner import run_rehearsal
    from mailqueue.rehearsal.scenario import load_scenario

    scenario = load_scenario(scenario_path)
    target = Path(out or Path("var") / "rehearsal" / Path(scenario_path).stem).absolute()
    directories = {"--out" if out else "report directory (--out)": target}
    if workdir:
        directories["--workdir"] = Path(workdir).absolute()
    writable_directories(directories)
    work = directories.get("--workdir") or _temporary_workdir()
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
    print(f"report: {target}/ (timeline.md, queue.png, series.csv, report.json)")
    return 1 if figures["lost"] or figures["duplicated"] or figures["pending"] else 0


def writable_directories(directories: dict[str, Path]) -> None:
    """Make each directory (with its parents) and write a file in it, or raise a usage
    error naming the option and the path; none is made when one can never be."""
    from mailqueue.mailbox.placement import never_holds_maildirs

    for what, path in directories.items():
        reason = never_holds_maildirs(path)
        if reason is not None:
            raise click.UsageError(f"{what}: {reason}")
    for what, path in directories.items():
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise click.UsageError(f"{what}: cannot write to {path}: {exc.strerror or exc}"
                                   ) from exc


def _temporary_workdir() -> Path:
    try:
        work = Path(tempfile.mkdtemp(prefix="mailqueue-rehearsal-"))
        work.chmod(0o711)  # the probes' Dovecot serves the Maildirs in it as its mail user
        return work
    except OSError as exc:
        raise click.UsageError(f"cannot make a temporary work directory: "
                               f"{exc.strerror or exc} (give --workdir DIR, or set TMPDIR)"
                               ) from exc
