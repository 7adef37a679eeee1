"""Entry point of `make bench`; see tests/bench/__init__.py for how to run one figure."""

from __future__ import annotations

import argparse
import platform
import sys
import time
import traceback
from collections.abc import Callable

from tests.bench.results import RESULTS, Figure, results_write, table
from tests.bench.stack import Bench


def _figures() -> dict[str, Callable[[Bench], list[Figure]]]:
    from tests.bench import (
        concurrent_uploads,
        direct_throughput,
        event_gap,
        fanout,
        fanout_idle,
        fanout_stalled,
        local_throughput,
        pipelining,
        progress_latency,
        recovery,
        s3_throughput,
        server_memory,
        small_uploads,
        tus_throughput,
        upload_answer,
        webhooks,
        worker_memory,
    )

    return {
        "upload_answer": upload_answer.run,
        "upload_answer_delayed": upload_answer.run_delayed,
        "server_rss": server_memory.run,
        "event_gap": event_gap.run,
        "worker_rss": worker_memory.run,
        "local_throughput": local_throughput.run,
        "s3_throughput": s3_throughput.run,
        "progress_latency": progress_latency.run,
        "small_uploads": small_uploads.run,
        "fanout": fanout.run,
        "fanout_stalled": fanout_stalled.run,
        "fanout_idle": fanout_idle.run,
        "concurrent_uploads": concurrent_uploads.run,
        "webhook_delivery": webhooks.run_delivery,
        "webhook_hanging": webhooks.run_hanging,
        "recovery": recovery.run,
        "tus": tus_throughput.run,
        "direct": direct_throughput.run,
        "pipelined_local": pipelining.run_local,
        "pipelined_s3": pipelining.run_s3,
    }


def main(argv: list[str] | None = None) -> int:
    figures = _figures()
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--only", metavar="METRIC[,METRIC]", help=f"run only these ({', '.join(figures)})")
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(figures))
        return 0
    chosen = list(figures) if not args.only else [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in figures]
    if unknown:
        parser.error(f"unknown figure(s): {', '.join(unknown)}; choose from {', '.join(figures)}")

    print(
        f"machine: {platform.node()} {platform.machine()}, "
        f"{platform.python_implementation()} {platform.python_version()}, {_cpus()} CPUs, load average {_load()}",
        flush=True,
    )
    results: list[Figure] = []
    failed: list[str] = []
    started = time.monotonic()
    with Bench() as bench:
        for name in chosen:
            print(f"[{time.monotonic() - started:6.1f}s] {name} ...", flush=True)
            try:
                made = figures[name](bench)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            results.extend(made)
            results_write(made)
            for each in made:
                print(f"         {each.metric}: ours {each.ours:.3f} {each.unit}, baseline {each.baseline}", flush=True)
    print(f"\nfinished in {time.monotonic() - started:.0f} s (load average now {_load()}); results in {RESULTS}\n")
    print(table(results))
    if failed:
        print(f"\nfigures that could not be measured: {', '.join(failed)}")
    return 1 if failed else 0


def _load() -> str:
    """The machine's load: figures from a shared machine are only as quiet as this says."""
    import os

    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
