"""CPU cost per job of building its row (producer) and of decoding + running it (worker), by
serializer, compression and signature — no database, so the figures hold on a busy machine.

    .venv/bin/python benchmarks/payload_bench.py [--repeat 7] [--jobs 2000] [--default-only]
                                                 [--bulk N] [--dsn DSN]

Each figure is the best of `--repeat` rounds of `--jobs` jobs, in CPU microseconds per job
(time.process_time). `--default-only` measures only plain JSON jobs, so that the same script
compares a tree without the payload features (run it with PYTHONPATH=<that tree>).
`--bulk N` also measures the client CPU of `enqueue_many` of N plain jobs (one COPY, in a
transaction that is rolled back) against a fresh schema (`--dsn`, else as benchmarks/run.py).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from pgq import App
from pgq.enqueue import build_row
from pgq.worker.executor import Job, execute

app = App("payload-bench", dsn="postgresql:///unused")


@app.task(name="bench.noop")
def noop(*args: Any, **kwargs: Any) -> None:
    del args, kwargs


SMALL = ([1, "two", 3.0], {"k": "v"})
LARGE = (["lorem ipsum dolor sit amet " * 400], {})  # ~10.8 kB of text


def as_job(row: Any) -> Job:
    """What the claim query returns for this row (the worker's view of it)."""
    fields = dict(id=row.id, task=row.task, state="STARTED", args=row.args, kwargs=row.kwargs,
                  options=row.options, queue=row.queue, priority=row.priority, eta=None,
                  retries=0, attempts=1, root_id=row.id, parent_id=None, group_id=None)
    for extra in ("content_type", "compression", "payload", "signature"):
        if extra in Job._fields:
            fields[extra] = getattr(row, extra)
    return Job(**fields)


def best(repeat: int, jobs: int, fn: Callable[[], Any]) -> float:
    rounds = []
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(jobs):
            fn()
        rounds.append((time.process_time() - started) / jobs * 1e6)
    return min(rounds)


def measure(label: str, settings: dict[str, Any], options: dict[str, Any],
            payload: tuple[list[Any], dict[str, Any]], repeat: int, jobs: int) -> None:
    saved = dict(app.conf._explicit)
    app.conf.update(settings)
    try:
        args, kwargs = payload
        produce = best(repeat, jobs, lambda: build_row(app, "bench.noop", args, kwargs,
                                                       options, noop))
        row = build_row(app, "bench.noop", args, kwargs, options, noop)
        job = as_job(row)
        outcome = execute(app, job, "bench")
        assert outcome.state == "SUCCESS", outcome
        work = best(repeat, jobs, lambda: execute(app, job, "bench"))
        size = len(getattr(row, "payload", None) or b"") or len(row.args) + len(row.kwargs)
        print(f"| {label:<38} | {produce:>9.1f} | {work:>12.1f} | {size:>13,} |")
    finally:
        app.conf._explicit.clear()
        app.conf._explicit.update(saved)
        app.conf._resolved.clear()
        if "_memo" in vars(app.conf):
            app.conf._memo.clear()


def bulk(dsn: str | None, rows: int, repeat: int) -> None:
    from common import fresh_schema, resolve_dsn

    url = resolve_dsn(dsn)
    with fresh_schema(url, "payload_bench") as schema:
        bulk_app = App("payload-bulk", dsn=url, schema=schema)
        task = bulk_app.task(name="bench.noop")(noop.run)
        with bulk_app.connect(autocommit=False) as conn:
            rounds = []
            for _ in range(repeat):
                started = time.process_time()
                bulk_app.enqueue_many([task.s(i) for i in range(rows)], connection=conn)
                rounds.append((time.process_time() - started) / rows * 1e6)
                conn.rollback()
        bulk_app.close()
    print(f"| enqueue_many, {rows} plain jobs (client) | {min(rounds):>9.1f} |              |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--default-only", action="store_true")
    parser.add_argument("--bulk", type=int, metavar="N")
    parser.add_argument("--dsn")
    opts = parser.parse_args()
    r, n = opts.repeat, opts.jobs
    print("| job (CPU µs per job, best of rounds)   | build row | decode + run | argument bytes |")
    print("|----------------------------------------|-----------|--------------|---------------|")
    if opts.bulk:
        bulk(opts.dsn, opts.bulk, r)
    measure("json (default), small args", {}, {}, SMALL, r, n)
    measure("json (default), 10.8 kB args", {}, {}, LARGE, r, n)
    if opts.default_only:
        return
    from pgq import security

    every = {"accept_content": ["json", "msgpack", "yaml", "pickle"]}
    measure("msgpack, small args", every, {"serializer": "msgpack"}, SMALL, r, n)
    measure("yaml, small args", every, {"serializer": "yaml"}, SMALL, r, n)
    measure("pickle, small args", every, {"serializer": "pickle"}, SMALL, r, n)
    measure("json + zlib, 10.8 kB args", {}, {"compression": "zlib"}, LARGE, r, n)
    measure("json + bzip2, 10.8 kB args", {}, {"compression": "bzip2"}, LARGE, r, n)
    measure("json + lzma, 10.8 kB args", {}, {"compression": "lzma"}, LARGE, r, n)
    hmac_key = {"security_hmac_key": "bench", "security_require_signature": True}
    measure("json, HMAC-SHA256 signed, small args", hmac_key, {}, SMALL, r, n)
    measure("json, HMAC-SHA256 signed, 10.8 kB args", hmac_key, {}, LARGE, r, n)
    private, _ = security.generate_ed25519_pem()
    ed = {"security_key": private.decode(), "security_require_signature": True}
    measure("json, Ed25519 signed, small args", ed, {}, SMALL, r, n)


if __name__ == "__main__":
    main()
