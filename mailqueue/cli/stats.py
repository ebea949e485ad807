"""``mailqueue stats``: the queue's counts, totals and drain rate, as text or JSON."""

from __future__ import annotations

import json

import click

from mailqueue.cli._common import config_option, in_service, load
from mailqueue.clock import SystemClock
from mailqueue.queue.values import QueueReport
from mailqueue.service.messages import queue_report, stats_json
from mailqueue.timeparse import format_duration


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(config_path: str | None, as_json: bool) -> None:
    """Queue counts by state, bytes, oldest age, totals and drain rate."""
    config = load(config_path)
    report = in_service(config, queue_report)
    click.echo(render_stats(report, SystemClock().now(), as_json))


def render_stats(report: QueueReport, now: float, as_json: bool = False) -> str:
    """Counts per state, bytes queued, oldest age, totals and the current drain rate."""
    oldest = None if report.oldest_pending is None else max(0.0, now - report.oldest_pending)
    if as_json:
        return json.dumps(stats_json(report, now))
    states = " ".join(f"{k}={v}" for k, v in report.by_state.items())
    lines = [f"recipients: {states}",
             f"messages pending: {report.messages_pending} ({report.bytes_pending} bytes); "
             f"accepted in all: {report.accepted}",
             f"oldest pending: {format_duration(oldest) if oldest is not None else '-'}",
             f"totals (recipients): accepted={report.recipients_accepted} "
             f"delivered={report.delivered} bounced={report.bounced} "
             f"deleted={report.deleted}",
             f"drain rate: {report.drain_rate:.2f} recipients/s "
             f"(delivered in the last {format_duration(report.recent_seconds)}: "
             f"{report.delivered_recent})"]
    return "\n".join(lines)
