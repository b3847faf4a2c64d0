"""pgq works as an installed wheel, and the embedded server is shared between processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_migrate_from_an_installed_wheel(tmp_path, dsn):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(ROOT)], check=True, timeout=300)
    (wheel,) = wheels.glob("pgq_tasks-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    schema = "w_" + uuid.uuid4().hex[:8]
    code = textwrap.dedent(f"""
        import pgq, sys
        assert pgq.__file__.startswith({str(target)!r}), pgq.__file__
        from pgq.cli import main
        sys.argv = ["pgq", "migrate", "--dsn", {dsn!r}, "--schema", {schema!r}]
        main()
    """)
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{schema}".jobs').fetchone()[0] == 0
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.skipif(os.environ.get("PGQ_SKIP_EMBEDDED") == "1", reason="embedded disabled")
def test_embedded_server_is_shared_by_producer_and_worker(tmp_path):
    """With no DSN anywhere, a producer and a separately started worker find one server."""
    (tmp_path / "embapp.py").write_text(textwrap.dedent("""
        from pgq import App
        app = App("emb")

        @app.task
        def mul(x, y):
            return x * y
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("PGQ_DSN",)}
    env["PYTHONPATH"] = str(tmp_path)
    pgq_bin = str(Path(sys.executable).parent / "pgq")
    subprocess.run([pgq_bin, "migrate", "-A", "embapp"], cwd=tmp_path, env=env, check=True,
                   timeout=120, capture_output=True)
    worker = subprocess.Popen([pgq_bin, "worker", "-A", "embapp", "-c", "1"], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        code = "from embapp import mul; print(mul.delay(6, 7).get(timeout=30))"
        producer = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=60)
        assert producer.returncode == 0, producer.stderr
        assert producer.stdout.strip() == "42"
        assert "embedded PostgreSQL" in producer.stderr  # the one line saying so
    finally:
        worker.terminate()
        worker.wait(30)
        subprocess.run([pgq_bin, "embedded", "stop"], cwd=tmp_path, env=env, timeout=60)
    assert (tmp_path / ".pgq" / "pgdata" / "PG_VERSION").exists()
