"""``ccgsc-worker``: run an edge worker from the command line until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Sequence
from typing import Any

from ccgsc_worker import __version__, protocol
from ccgsc_worker.client import EdgeWorker, WorkerRejected

TOKEN_ENV = "CCGSC_WORKER_TOKEN"  # noqa: S105 - the variable name, not a secret
EXIT_OK = 0
EXIT_UNAUTHORIZED = 2
EXIT_PROTOCOL_VERSION = 3

log = logging.getLogger("ccgsc_worker.cli")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="ccgsc-worker",
        description="Contribute this machine's CPU to a CCGSC server: runs the server's "
        "hash-pinned WebAssembly kernels and sends their results back.",
    )
    parser.add_argument(
        "--server", required=True, help="server base URL, e.g. https://ccgsc.example.org"
    )
    parser.add_argument(
        "--token", help=f"worker token (default: the {TOKEN_ENV} environment variable)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=min(os.cpu_count() or 1, protocol.MAX_SLOTS),
        help="tasks to run at once (default: one per core, at most 64)",
    )
    parser.add_argument(
        "--cache-dir", help="directory to keep downloaded kernels in (default: memory only)"
    )
    parser.add_argument(
        "--max-upload-bytes-per-second",
        type=int,
        metavar="BYTES",
        help="limit FL update uploads to this average rate, e.g. 125000 for 1 Mbit/s "
        "(default: no limit)",
    )
    parser.add_argument(
        "--data",
        metavar="FILE.csv",
        help="your own data for analytics jobs on local data: a CSV file with a header row; "
        "only counts, sums and histograms of the columns a job asks for leave this machine",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="how much to print (default: info)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _short(assignment_id: str) -> str:
    return assignment_id[:8]


class ProgressPrinter:
    """Turns worker events into concise log lines."""

    def __init__(self) -> None:
        self.worker: EdgeWorker | None = None

    def __call__(self, name: str, info: dict[str, Any]) -> None:
        """Log one worker event."""
        handler = getattr(self, f"_{name}", None)
        if handler is not None:
            handler(info)

    def _welcome(self, info: dict[str, Any]) -> None:
        resent = f", re-sending {info['resending']} results" if info["resending"] else ""
        how = "resumed" if info["resumed"] else "connected"
        log.info(
            "%s as worker %s (heartbeat %.0f s%s)",
            how,
            info["worker"],
            info["heartbeat_ms"] / 1000,
            resent,
        )

    def _connect_failed(self, info: dict[str, Any]) -> None:
        log.warning("could not connect: %s", info["error"])

    def _reconnecting(self, info: dict[str, Any]) -> None:
        if info["code"] is None:
            log.info("reconnecting in %.1f s", info["delay"])
            return
        reason = f": {info['reason']}" if info["reason"] else ""
        log.warning(
            "connection closed (code %s%s); reconnecting in %.1f s",
            info["code"],
            reason,
            info["delay"],
        )

    def _completed(self, info: dict[str, Any]) -> None:
        a = info["assignment"]
        log.info(
            "done %s [%d, %d) in %.2f s  %s",
            a.kernel.name,
            a.lo,
            a.hi,
            info["elapsed_ms"] / 1000,
            _short(a.id),
        )

    def _failed(self, info: dict[str, Any]) -> None:
        log.warning(
            "task %s failed (%s): %s", _short(info["assignment"]), info["code"], info["message"]
        )

    def _round_invite(self, info: dict[str, Any]) -> None:
        log.info("training round %s of job %s", info["round"], _short(info["job"]))

    def _round_declined(self, info: dict[str, Any]) -> None:
        log.info(
            "declined round %s of job %s (%s)", info["round"], _short(info["job"]), info["reason"]
        )

    def _round_finished(self, info: dict[str, Any]) -> None:
        level = logging.INFO if info["outcome"] == "uploaded" else logging.WARNING
        detail = f": {info['message']}" if info["message"] else ""
        log.log(
            level, "round participation %s %s%s", info["participation"], info["outcome"], detail
        )

    def _cancel(self, info: dict[str, Any]) -> None:
        log.info("task %s cancelled by the server (%s)", _short(info["assignment"]), info["reason"])

    def _ack(self, info: dict[str, Any]) -> None:
        level = logging.DEBUG if info["status"] in ("accepted", "duplicate") else logging.INFO
        log.log(level, "result %s %s", _short(info["assignment"]), info["status"])

    def _credit(self, info: dict[str, Any]) -> None:
        total = self.worker.stats if self.worker is not None else None
        suffix = f" (session: {total.validated} validated)" if total is not None else ""
        log.info(
            "credit: +%d validated, +%d work units%s",
            info["validated"],
            info["work_units"],
            suffix,
        )

    def _server_error(self, info: dict[str, Any]) -> None:
        log.warning("server error %s: %s", info["code"], info["message"])

    def _bad_message(self, info: dict[str, Any]) -> None:
        log.warning("ignored a malformed server message: %s", info["error"])

    def _stopping(self, info: dict[str, Any]) -> None:
        if info["abandon"]:
            log.info("stopping now, abandoning running tasks")
        else:
            log.info("stopping: finishing running tasks (interrupt again to abandon them)")

    def _stopped(self, info: dict[str, Any]) -> None:
        stats = info["stats"]
        log.info(
            "stopped: %d tasks completed, %d results acknowledged, %d validated, %d errors",
            stats.tasks_completed,
            stats.results_acked,
            stats.validated,
            stats.errors,
        )


async def _run(worker: EdgeWorker) -> int:
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        worker.stop(abandon=worker.stopping)  # a second interrupt abandons running tasks

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    try:
        await worker.run()
    except WorkerRejected as exc:
        log.error("%s", exc)
        if exc.code == protocol.CLOSE_UNAUTHORIZED:
            log.error("check the worker token (--token or %s)", TOKEN_ENV)
            return EXIT_UNAUTHORIZED
        log.error("upgrade ccgsc-worker to a version the server supports")
        return EXIT_PROTOCOL_VERSION
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ccgsc-worker`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if not token:
        parser.error(f"a worker token is required: --token or the {TOKEN_ENV} variable")
    if args.data is not None and not os.path.isfile(args.data):
        parser.error(f"--data {args.data}: no such file")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
    )
    printer = ProgressPrinter()
    try:
        worker = EdgeWorker(
            args.server,
            token,
            args.concurrency,
            kernel_cache_dir=args.cache_dir,
            on_event=printer,
            max_upload_bytes_per_second=args.max_upload_bytes_per_second,
            local_data=args.data,
        )
    except ValueError as exc:
        parser.error(str(exc))
    printer.worker = worker
    log.info("ccgsc-worker %s: %s, %d slots", __version__, worker.ws_url, worker.concurrency)
    try:
        return asyncio.run(_run(worker))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
