"""pgq beside its peers, in one run: one command, one table.

    .venv/bin/python benchmarks/compare.py            # 3 reps of everything, ~25 min
    .venv/bin/python benchmarks/compare.py --quick    # smoke: 1 rep, small sizes, ~5 min
    .venv/bin/python benchmarks/compare.py --peers "procrastinate pgqueuer" --reps 1
    .venv/bin/python benchmarks/compare.py --peers "" # pgq alone, through the same harness
    .venv/bin/python benchmarks/compare.py --peers "" --baseline 9a0d5e1   # before/after
    .venv/bin/python benchmarks/compare.py --smoke    # CI: pgq only, tiny sizes, ~20 s

It uses the shared peer harness (default ../shared/bench/peers next to this repository; else
--harness DIR or $PGQ_PEERS_HARNESS). The harness is copied into ./.pgq/peers (its own
.venv with the peers' pinned versions is created there once, from PyPI), its servers.sh starts
a fresh PostgreSQL 15 cluster (fsync on) and Redis, every peer runs its bench_<peer>.py, pgq
runs benchmarks/peers/bench_pgq.py (same protocol, pgq's .venv) against the same cluster,
and the servers this command started are stopped at the end. Results: ./.pgq/peers/results/
(raw JSON per repetition), ./.pgq/peers/RESULTS.md (the harness' tables, pgq included) and
./.pgq/peers/COMPARE.md (the table printed at the end).

--baseline REV also runs pgq as of commit REV (exported with `git archive` into
./.pgq/peers/baseline-REV, first on PYTHONPATH, its own database bench_pgq_base) right before
the current checkout, so before/after ratios come from one run on one machine state.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".pgq" / "peers"
BENCH_PGQ = ROOT / "benchmarks" / "peers" / "bench_pgq.py"
DEFAULT_HARNESS = ROOT.parent / "shared" / "bench" / "peers"
PEERS = ("celery_redis", "procrastinate", "pgqueuer", "celery_sqla")
HARNESS_FILES = ("*.py", "*.sh", "*.txt", "*.md")
QUICK = ["--n", "2000", "--c-iters", "50", "--d-seconds", "5"]
SMOKE = ["--n", "300", "--batch", "100", "--c-iters", "10", "--c-warmup", "2"]
PGQ_QUICK = ["--f-jobs", "200", "--e-finished", "200000", "--e-future", "10000"]
PEER_CAP_S = 600  # the harness' own cap per peer (run_all.sh)
PGQ_CAP_S = 1200  # A-D and F; E has its own (loading millions of rows)
E_CAP_S = 1500

MISSING_HARNESS = """\
error: the peer harness is not at {path}.
It is the shared directory shared/bench/peers (bench_<peer>.py, common.py, servers.sh,
summarize.py) that sits next to this repository in the pgq workspace. Either
  - pass its location: --harness DIR (or set PGQ_PEERS_HARNESS=DIR), or
  - measure pgq alone without it: .venv/bin/python benchmarks/run.py (A, B, C on pgq's own
    embedded PostgreSQL; see docs/performance.md)."""


# --- the run ---------------------------------------------------------------------------------


def find_harness(given: str | None) -> Path:
    path = Path(given or os.environ.get("PGQ_PEERS_HARNESS") or DEFAULT_HARNESS).resolve()
    if not (path / "common.py").is_file() or not (path / "servers.sh").is_file():
        sys.exit(MISSING_HARNESS.format(path=path))
    return path


def copy_harness(harness: Path) -> None:
    """A private working copy: the shared directory stays untouched (its results, logs and
    .venv would otherwise be written there). Old results are removed, so the table shows
    only this run."""
    WORK.mkdir(parents=True, exist_ok=True)
    for pattern in HARNESS_FILES:
        for source in harness.glob(pattern):
            target = WORK / source.name
            target.unlink(missing_ok=True)
            shutil.copyfile(source, target)
            target.chmod(0o755 if source.suffix == ".sh" else 0o644)
    shutil.rmtree(WORK / "results", ignore_errors=True)
    (WORK / "results").mkdir()
    (WORK / "logs").mkdir(exist_ok=True)


def ensure_peer_venv() -> Path:
    python = WORK / ".venv" / "bin" / "python"
    requirements = (WORK / "requirements.txt").read_text()
    stamp = WORK / ".venv" / ".requirements"
    if python.exists() and stamp.exists() and stamp.read_text() == requirements:
        return python
    print("creating the peers' .venv in .pgq/peers (pinned versions from requirements.txt)",
          flush=True)
    if not python.exists():
        subprocess.run(["python3", "-m", "venv",
                        str(WORK / ".venv")], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r",
                    str(WORK / "requirements.txt")], check=True)
    stamp.write_text(requirements)
    return python


def export_baseline(rev: str) -> Path:
    """pgq as of `rev` (its pgq/ package only), for PYTHONPATH."""
    full = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True,
                          text=True, check=False).stdout.strip()
    if not full:
        sys.exit(f"error: --baseline {rev!r} is not a commit of this repository")
    target = WORK / f"baseline-{full}"
    if not (target / "REVISION").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", full, "pgq"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        (target / "REVISION").write_text(full + "\n")
    return target


def ensure_redis_server() -> None:
    if shutil.which("redis-server"):
        return
    if os.geteuid() != 0:
        sys.exit("error: celery_redis needs redis-server: apt-get install -y redis-server "
                 "(or leave celery_redis out: --peers \"procrastinate pgqueuer celery_sqla\")")
    print("installing redis-server from Debian", flush=True)
    subprocess.run("apt-get update -qq && apt-get install -y -qq redis-server >/dev/null",
                   shell=True, check=True)


def servers(action: str) -> bool:
    """Run one function of the harness' servers.sh (start_pg, stop_redis, pg_running, ...)."""
    done = subprocess.run(["bash", "-c", f"source ./servers.sh && {action}"], cwd=WORK,
                          check=False)
    return done.returncode == 0


@dataclass
class Servers:
    redis: bool
    started: list[str]

    def __enter__(self) -> Servers:
        for name in ("pg", "redis") if self.redis else ("pg",):
            if servers(f"{name}_running"):
                print(f"reusing the running {name} server", flush=True)
                continue
            if not servers(f"start_{name}"):
                self.__exit__()
                sys.exit(f"error: could not start {name} (see the lines above)")
            self.started.append(name)
        return self

    def __exit__(self, *exc: object) -> None:
        while self.started:
            servers(f"stop_{self.started.pop()}")


def run_bench(tag: str, command: list[str], cap_s: int, env: dict[str, str] | None = None
              ) -> None:
    """One harness orchestrator (all reps of one peer), capped like run_all.sh does it; its
    `[tag]` progress lines are shown, everything goes to logs/run_<tag>.log."""
    print(f"=== {tag} ({time.strftime('%H:%M:%S')})", flush=True)
    log_path = WORK / "logs" / f"run_{tag}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["timeout", "-k", "30", str(cap_s), *command], cwd=WORK,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if line.startswith(f"[{tag}]"):
                    print(line, end="", flush=True)
            proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)  # the harness stops its workers on SIGTERM
            proc.wait(60)
            raise
    if proc.returncode != 0:
        print(f"!!! {tag} exited with {proc.returncode} (see {log_path})", flush=True)


# --- the table -------------------------------------------------------------------------------


LABELS = {"pgq": "pgq", "pgq_base": "pgq baseline", "celery_redis": "Celery+Redis",
          "procrastinate": "procrastinate", "pgqueuer": "pgqueuer", "celery_sqla": "Celery+PG"}


@dataclass(frozen=True)
class Row:
    label: str
    key: str
    higher_is_better: bool
    unit: str
    aim: float | None = None  # pgq's aim from issue 9, when it has one
    pgq_only: bool = False


ROWS = (
    Row("A enqueue one by one", "A_single_jobs_s", True, "jobs/s", 3_000),
    Row("A reference: bare psycopg INSERT into pgq.jobs", "A_bare_insert_jobs_s", True,
        "jobs/s", pgq_only=True),
    Row("A reference: bare INSERT, primary key only", "A_bare_insert_min_jobs_s", True,
        "jobs/s", pgq_only=True),
    Row("A one by one / bare INSERT into pgq.jobs", "A_single_vs_bare", True, "ratio",
        1 / 1.15, pgq_only=True),
    Row("A enqueue bulk (chunks of 1,000)", "A_batch_jobs_s", True, "jobs/s", 110_000),
    Row("B drain 10k, from worker start", "B_drain_jobs_s", True, "jobs/s", 12_000),
    Row("B drain, excl. start-up", "B_drain_excl_startup_jobs_s", True, "jobs/s"),
    Row("B worker CPU per job (supervisor + children, start-up included)",
        "B_worker_cpu_us_per_job", False, "us", pgq_only=True),
    Row("B PostgreSQL CPU per job (its backends)", "B_pg_cpu_us_per_job", False, "us",
        pgq_only=True),
    Row("C round trip p50", "C_p50_ms", False, "ms", 2.0),
    Row("C round trip p95", "C_p95_ms", False, "ms"),
    Row("C round trip p99", "C_p99_ms", False, "ms", 5.0),
    Row("D producer, one by one", "D_enq_jobs_s", True, "jobs/s"),
    Row("D completed", "D_done_jobs_s", True, "jobs/s"),
    Row("D enqueue->start p50", "D_enq_to_start_p50_ms", False, "ms", pgq_only=True),
    Row("D enqueue->start p95", "D_enq_to_start_p95_ms", False, "ms", pgq_only=True),
    Row("D enqueue->start p99", "D_enq_to_start_p99_ms", False, "ms", 20.0, pgq_only=True),
    Row("E drain, empty database", "E_empty_jobs_s", True, "jobs/s", pgq_only=True),
    Row("E drain, finished + future jobs kept", "E_loaded_jobs_s", True, "jobs/s",
        pgq_only=True),
    Row("E loaded / empty", "E_loaded_vs_empty", True, "ratio", 0.8, pgq_only=True),
    Row("F 10 ms sleep, prefork", "F_sleep_prefork_jobs_s", True, "jobs/s", pgq_only=True),
    Row("F 10 ms sleep, threads", "F_sleep_threads_jobs_s", True, "jobs/s", pgq_only=True),
    Row("F 5 ms CPU, prefork", "F_cpu_prefork_jobs_s", True, "jobs/s", pgq_only=True),
    Row("F 5 ms CPU, threads", "F_cpu_threads_jobs_s", True, "jobs/s", pgq_only=True),
)


def load_results(tags: list[str]) -> dict[str, list[dict[str, Any]]]:
    """tag -> the repetitions' result dicts (pgq's E run is merged into pgq)."""
    reps: dict[str, list[dict[str, Any]]] = {}
    for tag in tags:
        path = WORK / "results" / f"{tag}.json"
        if path.exists():
            reps.setdefault("pgq" if tag == "pgq_e" else tag, []).extend(
                json.loads(path.read_text())["reps"])
    return reps


def median_of(reps: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in reps if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ratio":
        return f"{value:.2f}"
    if unit in ("ms", "us") or value < 100:
        return f"{value:,.2f}" if value < 10 else f"{value:,.1f}"
    return f"{value:,.0f}"


def advantage(row: Row, pgq: float | None, peer: float | None) -> float | None:
    """How many times better pgq is (> 1: pgq better)."""
    if pgq is None or peer is None or pgq <= 0 or peer <= 0:
        return None
    return pgq / peer if row.higher_is_better else peer / pgq


def aim_cell(row: Row, value: float | None) -> str:
    if row.aim is None:
        return ""
    sign = ">=" if row.higher_is_better else "<="
    if value is None:
        return f"{sign} {fmt(row.aim, row.unit)}"
    met = value >= row.aim if row.higher_is_better else value <= row.aim
    return f"{sign} {fmt(row.aim, row.unit)}: {'met' if met else 'NOT met'}"


def build_table(reps: dict[str, list[dict[str, Any]]], peers: list[str]) -> list[list[str]]:
    shown = [p for p in peers if p in reps]
    header = ["", "unit", "pgq", *(LABELS.get(p, p) for p in shown), "pgq vs best peer",
              "aim (issue 9)"]
    table = [header]
    pgq = reps.get("pgq", [])
    for row in ROWS:
        mine = median_of(pgq, row.key)
        if mine is None and row.pgq_only:
            continue
        cells = [row.label, row.unit, fmt(mine, row.unit)]
        best: float | None = None
        for peer in shown:
            theirs = median_of(reps[peer], row.key)
            ratio = advantage(row, mine, theirs)
            cells.append(fmt(theirs, row.unit) + (f" (x{ratio:.2f})" if ratio else ""))
            if peer != "pgq_base" and ratio is not None and (best is None or ratio < best):
                best = ratio
        cells.append(f"x{best:.2f}" if best is not None else "")
        cells.append(aim_cell(row, mine))
        table.append(cells)
    return table


def markdown(table: list[list[str]]) -> str:
    numeric = range(2, len(table[0]) - 1)
    lines = ["| " + " | ".join(table[0]) + " |",
             "|" + "|".join("---:" if i in numeric else "---" for i in range(len(table[0])))
             + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)


def plain(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.rjust(w) if 1 < i < len(row) - 1 else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                     for row in table)


def describe_run(reps: dict[str, list[dict[str, Any]]], args: argparse.Namespace,
                 load: str) -> str:
    pgq_json = WORK / "results" / "pgq.json"
    env = json.loads(pgq_json.read_text()) if pgq_json.exists() else {}
    pg = env.get("postgres", {})
    counts = ", ".join(f"{LABELS.get(t, t)} {sum(1 for x in r if 'C_p50_ms' in x)}"
                       for t, r in reps.items())
    sizes = ("smoke (N=300, C=10)" if args.smoke else "quick (N=2,000, C=50, D=5 s)"
             if args.quick else "N=10,000, C=200, D=20 s")
    e_reps = [r for r in reps.get("pgq", []) if "E_kept_finished" in r]
    kept = (f"E kept {e_reps[0]['E_kept_finished']:,} finished + "
            f"{e_reps[0]['E_kept_future']:,} future jobs. " if e_reps else "")
    return (f"Medians over repetitions ({counts}); cells of peers: value (x how many times "
            f"better pgq is; > 1 = pgq better). PostgreSQL {pg.get('server_version', '?')} "
            f"fsync={pg.get('fsync', '?')} synchronous_commit={pg.get('synchronous_commit', '?')}"
            f"; Redis without persistence. pgq {env.get('versions', {}).get('pgq', '?')}. "
            f"Sizes: {sizes}"
            f". {kept}Machine load during the run: {load}.")


def load_average() -> Callable[[], str]:
    """Mean of the 1-minute load average sampled every few seconds by the caller."""
    samples: list[float] = []

    def sample() -> str:
        samples.append(os.getloadavg()[0])
        return f"load average {statistics.fmean(samples):.2f} (mean of {len(samples)} samples)"
    return sample


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="pgq and its peers in one run, one table")
    parser.add_argument("--harness", help="the peer harness directory (default: "
                        "../shared/bench/peers, or $PGQ_PEERS_HARNESS)")
    parser.add_argument("--peers", default=" ".join(PEERS),
                        help=f"space-separated peer tags (default: {' '.join(PEERS)})")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="1 rep, N=2,000, C=50, D=5 s, small E and F: a smoke run")
    parser.add_argument("--smoke", action="store_true",
                        help="pgq alone, A-C with 300 jobs and 10 round trips: only checks that "
                             "the benchmark still runs (CI)")
    parser.add_argument("--no-e", action="store_true",
                        help="skip workload E (loading 5M rows takes a few minutes)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run pgq as of this commit, for before/after ratios")
    parser.add_argument("--table-only", action="store_true",
                        help="only print the table of the results already in .pgq/peers")
    return parser.parse_args(argv)


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # so the running peer and the servers are stopped


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    args = parse_args(argv)
    if args.smoke:
        args.peers, args.quick, args.no_e, args.baseline = "", True, True, None
    peers = args.peers.split()
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        sys.exit(f"error: unknown peer(s) {unknown}; known: {' '.join(PEERS)}")
    load = load_average()
    if not args.table_only:
        run_all(args, peers, load)
    reps = load_results(["pgq", "pgq_e", "pgq_base", *peers])
    if "pgq" not in reps:
        sys.exit("error: no pgq results in .pgq/peers/results")
    table = build_table(reps, ["pgq_base", *peers])
    note = describe_run(reps, args, load())
    print()
    print(plain(table))
    print()
    print(note)
    (WORK / "COMPARE.md").write_text(markdown(table) + "\n\n" + note + "\n")
    print(f"wrote {WORK / 'COMPARE.md'} and {WORK / 'RESULTS.md'}")
    errors = [e for rep in reps["pgq"] for e in rep.get("errors", [])]
    for error in errors:
        print(f"pgq error: {error}", file=sys.stderr)
    return 1 if errors else 0


def run_all(args: argparse.Namespace, peers: list[str], load: Callable[[], str]) -> None:
    copy_harness(find_harness(args.harness))
    reps = ["--reps", "1" if args.quick else str(args.reps)]
    sizes = QUICK if args.quick else []
    workloads = "A_single,A_batch,B,C,D,F"
    if args.smoke:
        sizes, workloads = SMOKE, "A_single,A_batch,B,C"
    peer_python = ensure_peer_venv() if peers else None
    if "celery_redis" in peers:
        ensure_redis_server()
    pgq_env = {"PYTHONPATH": str(WORK)}
    pgq = [sys.executable, str(BENCH_PGQ), *reps, *sizes, "--max-seconds", str(PGQ_CAP_S - 60)]
    pgq_quick = PGQ_QUICK if args.quick else []
    with Servers(redis="celery_redis" in peers, started=[]):
        load()
        if args.baseline:
            copy = export_baseline(args.baseline)
            run_bench("pgq_base", [*pgq, "--workloads", workloads,
                                   "--peer-tag", "pgq_base", *pgq_quick], PGQ_CAP_S,
                      {"PYTHONPATH": os.pathsep.join([str(copy), str(WORK)]),
                       "PGQ_BENCH_PYTHONPATH": str(copy), "PGQ_BENCH_DB": "bench_pgq_base"})
            load()
        run_bench("pgq", [*pgq, "--workloads", workloads, *pgq_quick],
                  PGQ_CAP_S, pgq_env)
        load()
        for peer in peers:
            assert peer_python is not None
            run_bench(peer, [str(peer_python), f"bench_{peer}.py", *reps, "--peer-tag", peer,
                             *sizes], PEER_CAP_S)
            load()
        if not args.no_e:
            run_bench("pgq_e", [*pgq, "--workloads", "E", "--peer-tag", "pgq_e",
                                "--max-seconds", str(E_CAP_S - 60), *pgq_quick], E_CAP_S,
                      pgq_env)
            load()
        summarize = [sys.executable, "summarize.py", "pgq", *peers]
        subprocess.run(summarize, cwd=WORK, check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
