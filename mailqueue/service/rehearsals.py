"""Rehearsals: load a scenario, check the report's directory, and — in the serving
process — run one in the background, report its progress, and hand out its report.

The command line (``mailqueue rehearse``) runs a rehearsal in the foreground with the same
pieces; :class:`RehearsalRuns` runs them one at a time inside a server, on the event loop
it serves on, each on its own scaled clock, queue and Maildirs in a temporary directory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from mailqueue.errors import (
    ConflictError,
    InvalidInputError,
    MailqueueError,
    NotFoundError,
    RunInProgressError,
    UnknownRunError,
)
from mailqueue.rehearsal.scenario import Scenario, load_scenario, scenario_from_dict
from mailqueue.timeparse import format_time

if TYPE_CHECKING:
    from mailqueue.rehearsal.runner import Rehearsal

log = structlog.get_logger("mailqueue.rehearsal")

# The files of a report directory handed out, by suffix, with their content type.
REPORT_TYPES = {".png": "image/png", ".csv": "text/csv; charset=utf-8",
                ".md": "text/markdown; charset=utf-8", ".json": "application/json",
                ".txt": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8"}


def passed(figures: Mapping[str, Any]) -> bool:
    """A rehearsal passes when nothing was lost, duplicated or left pending."""
    return not (figures["lost"] or figures["duplicated"] or figures["pending"])


def writable_directories(directories: Mapping[str, Path], field: str = "out") -> None:
    """Make each directory (with its parents) and write a file in it, or raise
    :class:`InvalidInputError` naming it (by its key: ``--out``) and the path; none is made
    when one can never be."""
    from mailqueue.mailbox.placement import never_holds_maildirs

    for what, path in directories.items():
        reason = never_holds_maildirs(path)
        if reason is not None:
            raise InvalidInputError(f"{what}: {reason}", field=field)
    for what, path in directories.items():
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise InvalidInputError(f"{what}: cannot write to {path}: "
                                    f"{exc.strerror or exc}", field=field) from exc


def temporary_workdir() -> Path:
    """A fresh directory for a rehearsal's queue and Maildirs."""
    try:
        work = Path(tempfile.mkdtemp(prefix="mailqueue-rehearsal-"))
        work.chmod(0o711)  # the probes' Dovecot serves the Maildirs in it as its mail user
        return work
    except OSError as exc:
        raise InvalidInputError(f"cannot make a temporary work directory: "
                                f"{exc.strerror or exc} (give --workdir DIR, or set TMPDIR)"
                                ) from exc


def scenario_from_text(text: str, source: str = "<request>") -> Scenario:
    """A scenario from TOML text (a request's body rather than a file)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{source}: invalid TOML: {exc}",
                                field="scenario_toml") from None
    return scenario_from_dict(data, source)


@dataclasses.dataclass
class Run:
    """One rehearsal run by the serving process."""

    id: str
    scenario: Scenario
    source: str
    speed: float
    seed: int
    out: Path
    started_at: float
    state: str = "running"  # running, finished, failed
    phase: str = "starting"
    finished_at: float | None = None
    figures: dict[str, Any] | None = None
    error: str | None = None
    rehearsal: Rehearsal | None = None  # while it runs: where it is
    task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        """The run as JSON: its state, where it is in the scenario, and its outcome."""
        rehearsal = self.rehearsal
        phase = rehearsal.phase if rehearsal is not None and self.phase == "running" \
            else self.phase
        simulated = rehearsal.simulated_now() if rehearsal is not None else None
        span = self.scenario.end - self.scenario.start
        progress = 1.0 if self.state != "running" else 0.0 if simulated is None else \
            min(1.0, max(0.0, (simulated - self.scenario.start) / span))
        sample = rehearsal.latest if rehearsal is not None else None
        return {
            "id": self.id, "scenario": self.scenario.info.name, "source": self.source,
            "state": self.state, "phase": phase, "speed": self.speed, "seed": self.seed,
            "started_at": format_time(self.started_at),
            "finished_at": None if self.finished_at is None else format_time(self.finished_at),
            "out": str(self.out),
            "simulated_now": None if simulated is None else self.scenario.time(simulated),
            "progress": round(progress, 4),
            "sample": None if sample is None else {
                "at": self.scenario.time(sample.at), "depth": sample.depth,
                "queued": sample.queued, "delivered": sample.delivered,
                "bounced": sample.bounced, "accepted": sample.accepted, "held": sample.held},
            "figures": self.figures, "error": self.error,
            "passed": None if self.figures is None else passed(self.figures)}


class RehearsalRuns:
    """The rehearsals of one serving process: one runs at a time, in the background.

    ``on_change`` hears each run when it starts, changes phase and finishes (the event
    stream). ``base`` is the default parent of the report directories.
    """

    def __init__(self, on_change: Callable[[Run], None] | None = None,
                 base: Path = Path("var") / "rehearsal") -> None:
        self._runs: dict[str, Run] = {}
        self._ids = itertools.count(1)
        self._on_change = on_change or (lambda run: None)
        self._base = base

    def runs(self) -> list[Run]:
        """Every run since the server started, newest first."""
        return sorted(self._runs.values(), key=lambda r: r.started_at, reverse=True)

    def get(self, run_id: str) -> Run:
        run = self._runs.get(run_id)
        if run is None:
            known = ", ".join(self._runs) or "none"
            raise UnknownRunError(f"no rehearsal {run_id!r} (known: {known})", field="id")
        return run

    async def start(self, *, scenario: str | None = None, scenario_toml: str | None = None,
                    speed: float | None = None, seed: int | None = None,
                    out: str | None = None) -> Run:
        """Load the scenario (a file on the server, or TOML text), check the report
        directory, and start the run; :class:`RunInProgressError` while one runs."""
        if any(run.state == "running" for run in self._runs.values()):
            raise RunInProgressError("a rehearsal is already running: wait for it to finish")
        loaded, source, stem = await self._load(scenario, scenario_toml)
        if speed is not None and not speed > 0:
            raise InvalidInputError(f"speed: {speed!r} is not above 0", field="speed")
        run_id = f"r{next(self._ids)}"
        target = await asyncio.to_thread(self._report_directory, out, f"{stem}-{run_id}")
        run = Run(id=run_id, scenario=loaded, source=source,
                  speed=speed or loaded.info.speed,
                  seed=loaded.info.seed if seed is None else seed, out=target,
                  started_at=time.time())
        self._runs[run_id] = run
        run.task = asyncio.create_task(self._run(run), name=f"rehearsal-{run_id}")
        self._on_change(run)
        return run

    def _report_directory(self, out: str | None, name: str) -> Path:
        """The report directory asked for (else one named ``name``), made and writable."""
        target = Path(out or self._base / name).absolute()
        writable_directories({"out": target})
        return target

    async def _load(self, scenario: str | None,
                    scenario_toml: str | None) -> tuple[Scenario, str, str]:
        if (scenario is None) == (scenario_toml is None):
            raise InvalidInputError("give scenario (a file on the server) or scenario_toml "
                                    "(its text), one of them", field="scenario")
        try:
            if scenario is not None:
                return (await asyncio.to_thread(load_scenario, scenario), scenario,
                        Path(scenario).stem)
            assert scenario_toml is not None
            return scenario_from_text(scenario_toml), "<request>", "api"
        except InvalidInputError:
            raise
        except MailqueueError as exc:
            raise InvalidInputError(str(exc),
                                    field="scenario" if scenario else "scenario_toml") from exc

    async def _run(self, run: Run) -> None:
        from mailqueue.rehearsal.report import write_report
        from mailqueue.rehearsal.runner import Rehearsal

        work: Path | None = None
        try:
            work = await asyncio.to_thread(temporary_workdir)
            run.rehearsal = Rehearsal(run.scenario, work, run.speed, run.seed, progress=None)
            run.phase = "running"
            obs = await run.rehearsal.run()
            self._phase(run, "writing the report")
            run.figures = await asyncio.to_thread(write_report, obs, run.out)
            run.state = "finished"
        except asyncio.CancelledError:
            run.state, run.error = "failed", "stopped with the server"
            raise
        except MailqueueError as exc:
            run.state, run.error = "failed", str(exc)
        except Exception as exc:  # a bug: logged with its traceback, one line for the user
            log.exception("rehearsal_failed", run=run.id)
            run.state, run.error = "failed", f"internal error: {exc!r}"
        finally:
            run.phase = "done"
            run.finished_at = time.time()
            run.rehearsal = None
            if work is not None:
                await asyncio.shield(asyncio.to_thread(shutil.rmtree, work, True))
            self._on_change(run)

    def _phase(self, run: Run, phase: str) -> None:
        run.phase = phase
        self._on_change(run)

    def report(self, run_id: str) -> dict[str, Any]:
        """The finished run's ``report.json`` and the files of its report directory
        (reads files: blocking)."""
        run = self.get(run_id)
        if run.state == "running":
            raise ConflictError(f"rehearsal {run_id} is still running")
        if run.state == "failed":
            raise ConflictError(f"rehearsal {run_id} failed: {run.error}")
        import json

        document: dict[str, Any] = json.loads((run.out / "report.json").read_text("utf-8"))
        return document | {"files": self.files(run)}

    @staticmethod
    def files(run: Run) -> list[str]:
        return sorted(p.name for p in run.out.iterdir()
                      if p.is_file() and p.suffix in REPORT_TYPES) if run.out.is_dir() else []

    def report_file(self, run_id: str, name: str) -> tuple[Path, str]:
        """(path, content type) of one file of the run's report directory (blocking)."""
        run = self.get(run_id)
        if name not in self.files(run):
            raise NotFoundError(f"rehearsal {run_id} has no report file {name!r} (has: "
                                f"{', '.join(self.files(run)) or 'none yet'})", field="file")
        return run.out / name, REPORT_TYPES[Path(name).suffix]

    async def close(self) -> None:
        """Stop a running rehearsal (the server is stopping)."""
        tasks = [run.task for run in self._runs.values()
                 if run.task is not None and not run.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
