"""Long runs: the memory benchmark's smoke run, and the training loop's per-evaluation work (the
loss curve) taking memory that does not grow with the length of the log."""
import json
import os
import subprocess
import sys
import tracemalloc

from pyllm.train import LOG_FILE, _CurvePoints, _write_curve

from conftest import need_c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_longrun_quick_smoke():
    need_c()
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    env.pop("PYLLM_BACKEND", None)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_longrun.py"),
                        "--quick", "--threads", "1"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert "verdict: PASS" in lines[-1]
    rows = [line.split() for line in lines if line.startswith(("train ", "sample "))]
    assert [int(x[1].replace(",", "")) for x in rows if x[0] == "train"][-1] == 120
    assert [int(x[1].replace(",", "")) for x in rows if x[0] == "sample"][-1] >= 1200
    assert all(float(x[2]) > 0 and float(x[3]) >= float(x[2]) for x in rows)  # RSS <= peak


def test_curve_points_bounded_even_first_and_last():
    for n in (1, 7, 100):
        c = _CurvePoints(limit=100)
        for i in range(n):
            c.add((i, float(i)))
        assert c.points() == [(i, float(i)) for i in range(n)]  # short curves: every point
    for n in (101, 1000, 100003):
        c = _CurvePoints(limit=100)
        for i in range(n):
            c.add((i, float(i)))
        pts = c.points()
        assert 50 <= len(pts) <= 101
        xs = [x for x, _ in pts]
        assert xs[0] == 0 and xs[-1] == n - 1
        gaps = {b - a for a, b in zip(xs[:-2], xs[1:-1])}
        assert len(gaps) == 1  # evenly spaced (but for the last point)


def test_write_curve_memory_does_not_grow_with_the_log(tmp_path):
    """The curve is redrawn at every evaluation from log.jsonl; a 40,000-step log must not be
    held in memory (as a list of dicts it would take tens of MiB)."""
    entry = {"step": 0, "loss": 2.345678901234, "lr": 0.000912345, "grad_norm": 0.812345,
             "tokens_per_s": 12345.6, "time": 1234.567}
    peaks = []
    with open(tmp_path / LOG_FILE, "w", encoding="utf-8") as f:
        for n in (2000, 40000):
            while entry["step"] < n:
                e = dict(entry, step=entry["step"], loss=2.0 + 1e-5 * entry["step"])
                if entry["step"] % 100 == 99:
                    e["val_loss"] = 2.5
                f.write(json.dumps(e) + "\n")
                entry["step"] += 1
            f.flush()
            tracemalloc.start()
            try:
                _write_curve(str(tmp_path))
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
    assert (tmp_path / "loss.svg").stat().st_size > 1000
    assert peaks[1] < 4 * 2**20, peaks
    assert peaks[1] < 1.5 * peaks[0] + 2**19, peaks  # 20x the log, about the same memory
