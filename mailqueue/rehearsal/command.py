"""``mailqueue rehearse``: run a scenario, write the report, exit non-zero on loss."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from mailqueue.logs import configure_logging
from mailqueue.rehearsal.scenario import load_scenario


def rehearse(scenario_path: str, speed: float | None, seed: int | None, out: str | None,
             workdir: str | None, keep: bool) -> int:
    """Run ``scenario_path``; print the figures; the exit status (1 if lost or duplicated)."""
    from mailqueue.rehearsal.report import figures_text, write_report
    from mailqueue.rehearsal.runner import run_rehearsal

    scenario = load_scenario(scenario_path)
    configure_logging("console", "warning")
    target = Path(out) if out else Path("var") / "rehearsal" / Path(scenario_path).stem
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mailqueue-rehearsal-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"rehearsing {scenario.info.name} at {speed or scenario.info.speed:g}x "
          f"(work dir {work})", file=sys.stderr)
    try:
        obs = run_rehearsal(scenario, work, speed, seed)
        figures = write_report(obs, target)
    finally:
        if not workdir and not keep:
            shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(figures_text(figures))
    print(f"report: {target}/ (timeline.md, queue.png, series.csv, report.json)")
    return 1 if figures["lost"] or figures["duplicated"] or figures["pending"] else 0
