"""``mailqueue serve``: the SMTP front end, the delivery worker, or both, in one process."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys

import click
import structlog

from mailqueue.cli._common import config_option, load
from mailqueue.config import Config
from mailqueue.logs import configure_logging
from mailqueue.loops import LOOPS

log = structlog.get_logger("mailqueue.cli")


@click.command(short_help="Run the SMTP front end and delivery worker.")
@config_option
@click.option("--role", type=click.Choice(["all", "smtp", "worker"]), default="all",
              show_default=True, help="Run the SMTP front end, the delivery worker, or both.")
@click.option("--log-json", is_flag=True, help="Log one JSON object per line.")
@click.option("--port", type=click.IntRange(0, 65535), help="Override [smtp] port.")
@click.option("--loop", "loop_choice", type=click.Choice(LOOPS),
              default="auto", show_default=True,
              help="Event loop; auto uses uvloop when installed (the 'fast' extra).")
@click.option("--null", "null_queue", is_flag=True,
              help="Benchmarks only: storage switched off; 250 without storing anything.")
def serve(config_path: str | None, role: str, log_json: bool, port: int | None,
          loop_choice: str = "auto", null_queue: bool = False) -> None:
    """Run the SMTP front end and the delivery worker until SIGTERM or Ctrl-C."""
    from mailqueue import faults, loops
    from mailqueue.app import MailqueueApp
    from mailqueue.queue.nullstore import NullQueueStore

    if loop_choice == "uvloop" and not loops.uvloop_available():
        raise click.UsageError("--loop uvloop: uvloop is not installed "
                               "(pip install 'mailqueue[fast]')")

    faults.check()
    config = load(config_path)
    if port is not None:
        config = config.model_copy(update={"smtp": config.smtp.model_copy(
            update={"port": port})})
    configure_logging("json" if log_json else config.logging.format, config.logging.level,
                      background=True)
    if config.server.cpus is not None:
        loops.pin_cpus(config.server.cpus)  # before any thread starts: they inherit it
        log.info("cpus_pinned", cpus=",".join(map(str, config.server.cpus)))
    if config.queue.writer_cpus is not None:
        loops.check_cpus(config.queue.writer_cpus, "[queue] writer_cpus",
                         loops.cpus_before_pinning() or None)
    config, tuned = _tune(config, role, null_queue, loop_choice)

    async def main() -> None:
        app = MailqueueApp(config, run_smtp=role in ("all", "smtp"),
                           run_worker=role in ("all", "worker") and not null_queue,
                           queue=NullQueueStore() if null_queue else None, tuned=tuned)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, app.stop)
        await app.run()

    # The event loop shares the GIL with the queue writer, checkpoint and Maildir threads.
    # Each time one of them returns from SQLite or a system call it waits for the loop to
    # let go, up to the switch interval: 5 ms by default, long next to a group commit's
    # wait, which every session's 250 waits out. Serving uses a much shorter interval.
    sys.setswitchinterval(loops.SERVER_SWITCH_INTERVAL)
    # What start-up made (modules, the configuration) lives as long as the process: move it
    # out of the collector's reach, so a full collection walks only what serving made and
    # is short (every open session waits out a collection).
    gc.collect()
    gc.freeze()
    loops.run(main(), loop_choice)


def _tune(config: Config, role: str, null_queue: bool,
          loop_choice: str) -> tuple[Config, dict[str, object]]:
    """``config`` with what ``auto`` leaves open decided for this machine, and the choices
    with their reasons (the server logs them as ``server_tuned`` once it is up)."""
    from mailqueue import loops, tuning

    cpus = tuning.usable_cpus(loops.cpus_before_pinning(), tuning.cpu_quota())
    writer = tuning.choose_writer(config, run_smtp=role in ("all", "smtp"), null=null_queue,
                                  cpus=cpus)
    loop = tuning.choose_loop(loop_choice)
    fields: dict[str, object] = {
        "writer": writer.value, "writer_reason": writer.reason, "loop": loop.value,
        "loop_reason": loop.reason, "usable_cpus": cpus,
        "cpus": ",".join(map(str, config.server.cpus)) if config.server.cpus else "all"}
    return tuning.tuned(config, writer), fields
