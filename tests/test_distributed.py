"""Data-parallel training over MPI (pyllm.distributed): runs ``mpirun -n 2`` on tiny models and
compares with one process. Skips where mpi4py or mpirun is missing (CI installs the ``mpi`` extra
and fails such a skip: tests/conftest.py ORACLES)."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import pyllm
from pyllm.distributed import Solo, split_rows
from pyllm.train import TrainConfig, train

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "_mpi_worker.py")
STEP_FLOOR = 3e-3 / 1000       # 1/1000 of one AdamW step at the tests' lr
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hum an old "
         "song about rivers mountains and the patient sea").split()


def corpus(tmp_path):
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, size=12)) for _ in range(600)]
    p = tmp_path / "text.txt"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def spec(tmp_path, out, **kw):
    s = dict(data=corpus(tmp_path), out=str(tmp_path / out), steps=3, batch_size=4,
             block_size=16, n_layer=2, n_head=2, n_embd=32, lr=3e-3, warmup=0,
             eval_interval=1000, eval_iters=4, seed=5)
    s.update(kw)
    return s


def mpirun_cmd():
    try:
        import mpi4py  # noqa: F401
    except ImportError as exc:
        pytest.skip("mpi4py not installed (pip install -e '.[mpi]'): %s" % exc)
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    if exe is None:
        pytest.skip("mpi4py is installed but no mpirun / mpiexec is on PATH (mpi4py)")
    cmd = [exe, "-n", "2"]
    if "Open MPI" in subprocess.run([exe, "--version"], capture_output=True, text=True).stdout:
        cmd[1:1] = ["--oversubscribe", "--bind-to", "none"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd[1:1] = ["--allow-run-as-root"]
    return cmd


def child_env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYLLM_NUM_THREADS", "OMP_NUM_THREADS")}
    env["PYLLM_BACKEND"] = "c" if "c" in pyllm.available_backends() else "numpy"
    return env


def run_ranks(s, timeout=120):
    """Train under ``mpirun -n 2``; returns (completed process, seconds)."""
    t0 = time.time()
    r = subprocess.run(mpirun_cmd() + [sys.executable, WORKER, json.dumps(s), ROOT],
                       capture_output=True, text=True, timeout=timeout, env=child_env())
    return r, time.time() - t0


def losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_here(s, resume=False):
    prev = pyllm.get_backend()
    pyllm.set_backend(child_env()["PYLLM_BACKEND"])
    try:
        return train(TrainConfig(**s), resume=resume, progress=False, log=lambda m: None)
    finally:
        pyllm.set_backend(prev)


def test_two_ranks_take_the_same_steps_as_one_process(tmp_path):
    s2 = spec(tmp_path, "two", distributed=True)
    r, _ = run_ranks(s2)
    assert r.returncode == 0, r.stderr[-3000:]
    w0, w1 = (np.load(os.path.join(s2["out"], "rank%d.npy" % i)) for i in (0, 1))
    assert np.array_equal(w0.view(np.uint32), w1.view(np.uint32))   # bit-identical ranks
    one = train_here(spec(tmp_path, "one"))
    assert not np.array_equal(w0, one["model"].params)           # the sums ran in another order
    # rtol 1e-5; the floor is 1/1000 of a step (lr 3e-3): AdamW divides each gradient by its own
    # running RMS, so a weight whose gradient is within rounding of zero (|g| near eps = 1e-8,
    # 49 of 26,880 here) moves by a rounding-sized fraction of a step either way
    np.testing.assert_allclose(w0, one["model"].params, rtol=1e-5, atol=STEP_FLOOR)
    assert np.array_equal(pyllm.load(s2["out"]).params, w0)      # rank 0 saved what it trained
    assert "threads=1 ranks=2" in r.stdout                       # 2 cores / 2 ranks
    assert r.stderr.count("model: GPT") == 1                     # only rank 0 speaks
    assert "1 thread(s) per rank x 2 MPI ranks (2 rows each" in r.stderr


def test_losses_follow_the_single_process_run_step_by_step(tmp_path):
    s2 = spec(tmp_path, "two", steps=24, batch_size=8, eval_interval=8, distributed=True)
    r, _ = run_ranks(s2)
    assert r.returncode == 0, r.stderr[-3000:]
    one = train_here(spec(tmp_path, "one", steps=24, batch_size=8, eval_interval=8))
    a, b = losses(s2["out"]), losses(one["tokenizer"] and spec(tmp_path, "one")["out"])
    assert [e["step"] for e in a] == list(range(24)) == [e["step"] for e in b]
    for ea, eb in zip(a, b):
        assert abs(ea["loss"] - eb["loss"]) <= 1e-5, (ea, eb)
        assert ("val_loss" in ea) == ("val_loss" in eb)
        if "val_loss" in ea:
            assert abs(ea["val_loss"] - eb["val_loss"]) <= 1e-5
        assert ea["allreduce_s"] >= 0 and "allreduce_s" not in eb
    assert a[-1]["loss"] < a[0]["loss"] - 0.5                   # it learns


def test_resume_after_an_interrupted_two_rank_run(tmp_path):
    full = spec(tmp_path, "full", steps=8, eval_interval=4, distributed=True)
    r, _ = run_ranks(full)
    assert r.returncode == 0, r.stderr[-3000:]
    part = spec(tmp_path, "part", steps=8, eval_interval=4, distributed=True, stop_at=5)
    r, _ = run_ranks(part)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "stopped at step 5" in r.stderr
    r, _ = run_ranks(dict(part, stop_at=None, resume=True))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from step 5" in r.stderr
    want = np.load(os.path.join(full["out"], "rank0.npy"))
    for i in (0, 1):                                  # the same ranks: the same bits
        assert np.array_equal(np.load(os.path.join(part["out"], "rank%d.npy" % i)), want)
    assert [e["loss"] for e in losses(part["out"])] == [e["loss"] for e in losses(full["out"])]
    # and resumed by one process instead: the same run to float32 rounding
    part1 = spec(tmp_path, "part1", steps=8, eval_interval=4, distributed=True, stop_at=5)
    assert run_ranks(part1)[0].returncode == 0
    res = train_here(dict(part1, stop_at=None, distributed=False), resume=True)
    np.testing.assert_allclose(res["model"].params, want, rtol=1e-5, atol=STEP_FLOOR)


def test_a_failing_rank_ends_the_job_and_keeps_the_checkpoint(tmp_path):
    s = spec(tmp_path, "fail", steps=50, eval_interval=2, distributed=True, fail_at=[1, 4])
    r, dt = run_ranks(s, timeout=90)
    assert r.returncode != 0
    assert dt < 60, "mpirun took %.0f s to end after one rank failed" % dt
    assert "injected failure on rank 1" in r.stderr and "aborting all ranks" in r.stderr
    m, _, state = pyllm.checkpoint.load_checkpoint(s["out"])     # the last good one, intact
    assert state["step"] == 2
    assert np.all(np.isfinite(m.params))


def test_distributed_without_mpirun_is_a_plain_run(tmp_path):
    """World size 1: the same bits as a run without --distributed; and a plain run imports
    nothing from MPI."""
    mpirun_cmd()
    s = spec(tmp_path, "solo")
    code = ("import json, sys; sys.path.insert(0, %r); import pyllm.cli as c; "
            "rc = c.main(sys.argv[1:]); import sys as s2; "
            "print('MPI' if 'mpi4py' in s2.modules else 'noMPI'); raise SystemExit(rc)" % ROOT)
    base = [sys.executable, "-c", code, "train", "--data", s["data"], "--steps", "3",
            "--batch-size", "4", "--block-size", "16", "--n-layer", "2", "--n-head", "2",
            "--n-embd", "32", "--sample-tokens", "0", "--quiet"]
    env = {k: v for k, v in child_env().items() if not k.startswith(("OMPI_", "PMI", "PMIX"))}
    outs = []
    for flag, name in (([], "plain"), (["--distributed"], "dist")):
        r = subprocess.run(base + ["--out", str(tmp_path / name)] + flag, capture_output=True,
                           text=True, env=env, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(r.stdout.split()[-1])
    assert outs == ["noMPI", "MPI"]
    a, b = losses(str(tmp_path / "plain")), losses(str(tmp_path / "dist"))
    assert [e["loss"] for e in a] == [e["loss"] for e in b]


def test_the_global_batch_must_divide_over_the_ranks():
    class Four(Solo):
        size = 4

        def __init__(self, rank):
            self.rank = rank
    assert [split_rows(8, Four(r)) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert split_rows(5, Solo()) == (0, 5)
    with pytest.raises(ValueError, match=r"--batch-size 6 does not divide over 4 ranks.*"
                                         r"multiple of 4 \(or run 1 or 2 or 3 ranks\)"):
        split_rows(6, Four(0))
