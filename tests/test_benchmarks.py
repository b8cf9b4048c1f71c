"""The benchmark commands run (their --quick modes, as CI does) and report what they claim to: a
row per implementation and the C-vs-NumPy ratio. The speed figures themselves are not asserted
(speed targets belong to the benchmarks, on a quiet machine), only that the C backend was timed
and that its loss stays next to the NumPy backend's where both train."""
import os
import re
import subprocess
import sys

import pytest

from conftest import need_c

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(name, *args):
    need_c()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), "--quick", *args],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_bench_kernels_quick_times_every_kernel_on_both_backends():
    out = run_bench("bench_kernels.py")
    rows = [l for l in out.splitlines() if re.match(r"^\w[\w -]*\(?.*\)?\s+\d+\.\d+ \(", l)]
    names = {l.split()[0] for l in rows}
    for kernel in ("matmul_forward", "attention_forward", "attention_backward", "layernorm_forward",
                   "gelu_forward", "softmax_forward", "crossentropy_forward", "adamw_update"):
        assert kernel in names, out
    assert re.search(r"geometric-mean speed-up: \d+\.\dx", out)


def test_bench_train_quick_reports_c_and_numpy_with_equal_losses():
    out = run_bench("bench_train.py", "--impls", "c", "numpy")
    loss = {}
    for line in out.splitlines():
        m = re.match(r"^quick\s+(c|numpy)\s+(\d+) \(.*\)\s+(\d+)\s+([\d.]+)$", line.strip())
        if m:
            assert int(m.group(2)) > 0 and int(m.group(3)) > 0
            loss[m.group(1)] = float(m.group(4))
    assert set(loss) == {"c", "numpy"}, out
    # the same model and batches: a few AdamW steps apart only by rounding (AdamW amplifies it)
    assert abs(loss["c"] - loss["numpy"]) < 0.1, out
    assert re.search(r"quick: C is [\d.]+x numpy", out)


def test_bench_sample_quick_reports_both_backends():
    out = run_bench("bench_sample.py")
    assert re.search(r"pyllm-c\s+[\d.]+ \(", out) and re.search(r"pyllm-numpy\s+[\d.]+ \(", out)
    assert re.search(r"pyllm-c is [\d.]+x pyllm-numpy", out)
