"""The benchmark commands run (their --quick modes, as CI does) and report what they claim to: a
row per implementation and the C-vs-NumPy ratio. The speed figures themselves are not asserted
(speed targets belong to the benchmarks, on a quiet machine), only that the C backend was timed
and that its loss stays next to the NumPy backend's where both train."""
import os
import re
import subprocess
import sys

import numpy as np
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
    assert re.search(r"pyllm-c-int8\s+[\d.]+ \(", out)
    assert re.search(r"pyllm-c-int8 is [\d.]+x pyllm-c ", out)


def _induction_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "induction_heads", os.path.join(ROOT, "benchmarks", "induction_heads.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_induction_data_marks_exactly_the_predictable_copy():
    """Repeat rows: the masked inputs form one block whose next tokens repeat the token one
    period back, at a period other than the held-out one; skip-trigram rows follow pi."""
    ih = _induction_module()
    r = dict(ih.RECIPE, layout="twice")
    tables = ih.trigram_map(r, 0)
    perm = tables["pi"]
    x, y, mask = ih.make_batch(np.random.default_rng(1), r, tables, 400)
    seq = np.concatenate([x, y[:, -1:]], axis=1)
    n_rep = n_tri = 0
    for b in range(len(x)):
        if mask[b].all():
            n_tri += 1
            follows = seq[b, 2:] == perm[seq[b, :-2]]
            assert follows.mean() > 0.6
            continue
        n_rep += 1
        t = np.flatnonzero(mask[b])
        assert len(t) >= 1 and np.all(np.diff(t) == 1)
        P = len(t) + 1                               # predictions of copy tokens 2..P
        assert r["pmin"] <= P <= r["pmax"] and P != r["eval_period"]
        assert np.array_equal(y[b, t], seq[b, t + 1 - P])
        # and the token before the block is the copy's first one, P back
        assert seq[b, t[0]] == seq[b, t[0] - P]
    assert n_rep > 100 and n_tri > 100


def test_induction_trigger_rows_are_solvable_by_induction_and_follow_the_chain():
    """Trigger rows: each marked input is a token seen before in its row, and its target is a
    token that followed an earlier appearance; most transitions follow the bigram chain."""
    ih = _induction_module()
    r = dict(ih.RECIPE, layout="triggers", trig_mask_all=0)
    tables = ih.trigram_map(r, 0)
    chain = tables["chain"]
    x, y, mask = ih.make_batch(np.random.default_rng(2), r, tables, 200)
    assert x.shape == (200, r["ctx"]) and mask.sum() > 200
    seq = np.concatenate([x, y[:, -1:]], axis=1)
    for b, t in zip(*np.nonzero(mask)):
        earlier = np.flatnonzero(seq[b, :t] == seq[b, t])
        assert len(earlier) and y[b, t] in seq[b, earlier + 1]
    follows = np.array([[seq[b, t + 1] in chain[seq[b, t]] for t in range(r["ctx"])]
                        for b in range(len(x))])
    assert 0.6 < follows.mean() < 0.95
    # every position counts when trig_mask_all is on (the default)
    assert ih.make_batch(np.random.default_rng(2), dict(r, trig_mask_all=1), tables, 4)[2].all()


def test_induction_heads_quick_reports_scores_ablations_control_and_plot(tmp_path):
    svg = tmp_path / "ih.svg"
    out = run_bench("induction_heads.py", "--out", str(svg))
    for layer in range(2):
        for head in range(3):
            assert re.search(r"^%d\.%d\s+-?\d+\.\d\d\s+-?\d+\.\d\d" % (layer, head), out, re.M), out
    assert re.search(r"induction\s*$", out, re.M) and "previous-token" in out
    assert "1-layer step" in out
    for n in range(1, 5):
        assert re.search(r"^\s+%d\. " % n, out, re.M), out
    text = svg.read_text()
    assert text.count("<polyline") == 6 and "1-layer control" in text


def test_bench_attention_quick_times_the_three_kernels():
    out = run_bench("bench_attention.py")
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out,
                      re.M)
    assert len(rows) == 4, out                      # T = 64, 128 at head sizes 32 and 64
    for T, sm, fav, lin, r1, r2 in rows:
        assert float(sm) > 0 and float(fav) > 0 and float(lin) > 0
        assert abs(float(r1) - float(fav) / float(sm)) < 0.01 + 0.01 * float(r1)
    assert out.count("crossover:") == 2
    models = re.findall(r"^\s+(softmax|favor|linear)\s+([\d,]+) tokens/s\s+([\d.]+)x softmax$",
                        out, re.M)
    assert [k for k, _, _ in models] == ["softmax", "favor", "linear"], out
    assert models[0][2] == "1.00" and all(int(t.replace(",", "")) > 0 for _, t, _ in models)


def test_attention_training_quick_reports_three_kernels(tmp_path):
    data = os.path.join(os.path.dirname(ROOT), "shared", "data", "tinyshakespeare.txt")
    if not os.path.exists(data):
        pytest.skip("no ../shared/data/tinyshakespeare.txt beside the repository")
    svg = tmp_path / "curves.svg"
    out = run_bench("attention_training.py", "--out", str(tmp_path / "runs"), "--svg", str(svg))
    vals = dict(re.findall(r"^(softmax|favor|linear)\s+val loss ([\d.]+)", out, re.M))
    assert set(vals) == {"softmax", "favor", "linear"}, out
    # a few steps from the same initial weights and batches: all near ln(vocabulary)
    assert all(2.0 < float(v) < 6.0 for v in vals.values())
    assert svg.read_text().count("<polyline") == 3


def test_int8_quality_quick_reports_its_measures():
    data = os.path.join(os.path.dirname(ROOT), "shared", "data", "tinyshakespeare.txt")
    if not os.path.exists(data):
        pytest.skip("no ../shared/data/tinyshakespeare.txt beside the repository")
    out = run_bench("int8_quality.py")
    kl = float(re.search(r"mean KL\(float32 \|\| int8\) = ([\d.e+-]+)", out).group(1))
    ratio = float(re.search(r"perplexity float32 [\d.]+, int8 [\d.]+: ratio ([\d.]+)", out).group(1))
    assert 0 <= kl < 0.05 and abs(ratio - 1) < 0.05, out
    assert re.search(r"greedy agreement over 5 prompts x 20 tokens, each step on the float32 "
                     r"model's text: \d+/100", out), out
    assert re.search(r"free-running greedy texts: \d+/100 tokens equal", out), out
    size = float(re.search(r"files \d+ -> \d+ bytes: ([\d.]+)x", out).group(1))
    assert 0.2 < size <= 0.3, out


def test_bench_load_quick_reports_four_ways():
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc")
    out = run_bench("bench_load.py")
    rows = re.findall(r"^(float32|int8) (read|mmap)\s+load\s+([\d.]+) s \| resident after load "
                      r"\+\s*([\d.]+) MB \| peak with sampling\s+([\d.]+) MB$", out, re.M)
    assert len(rows) == 4, out
    assert re.search(r"int8 mmap peak / float32 read peak = [\d.]+", out)


def test_bench_lora_quick_reports_both_ways():
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc")
    out = run_bench("bench_lora.py")
    rows = dict(re.findall(r"^(full|lora)\s+step\s+[\d.]+ s \| peak memory\s+[\d.]+ MB \| "
                           r"trained numbers ([\d,]+)$", out, re.M))
    assert rows == {"full": "120,576", "lora": "16,384"}, out
    assert re.search(r"lora / full: step time [\d.]+ \(target <= 0.7\), peak memory [\d.]+", out)


def test_bench_distributed_quick_reports_both_layouts():
    pytest.importorskip("mpi4py")
    out = run_bench("bench_distributed.py")
    one = re.search(r"quick\s+1 rank x 2 thr\s+([\d,]+)\s+\(", out)
    two = re.search(r"quick\s+2 ranks x 1 thr\s+([\d,]+)\s+\(.*\)\s+([\d.]+)%", out)
    assert one and two, out
    assert 0 < float(two.group(2)) < 100
    assert re.search(r"2 ranks / 1 rank: [\d.]+x .* gradient slab [\d.]+ MB", out)
