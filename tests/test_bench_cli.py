"""`pyllm bench` runs from the installed package: one `--quick` run (a copy of the package in a
temporary directory, run from another, so no source checkout and no benchmarks/ directory is
within reach) prints the machine block and the three parts, writes JSON of the documented schema
(pyllm/bench.py) and compares itself with an earlier file; `--compare` of saved runs prints a
ratio for every row; bad files and bad arguments are clear errors. Speeds are not asserted, only
that they are finite and positive."""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

import pyllm
from pyllm import bench
from pyllm.backend import c_unavailable_reason
from pyllm.cli import main

KERNELS = ("encoder_forward", "layernorm_backward", "matmul_forward qkv", "gelu_forward",
           "softmax_forward", "crossentropy_backward", "attention_forward", "attention_backward",
           "adamw_update", "+ residual (fused)")


def _old_run(machine):
    """A hand-made earlier run: three rows the quick run also has, one it has not."""
    def r(part, name, impl, unit, med):
        return {"part": part, "config": "quick", "name": name, "implementation": impl,
                "threads": 2, "median": med, "min": med * 0.9, "max": med * 1.1, "unit": unit,
                "better": bench.UNIT_BETTER[unit], "samples": 3}
    return {"version": 1, "created": "2000-01-01T00:00:00Z", "argv": ["bench", "--quick"],
            "quick": True, "threads": 2, "machine": dict(machine, cpu_model="Imaginary CPU 9000"),
            "parts": {}, "rows": [r("kernels", "gelu_forward", "numpy", "ms", 1.0),
                                  r("train", "training step", "numpy", "tokens/s", 100.0),
                                  r("sample", "generate 30 tokens", "numpy", "tokens/s", 50.0),
                                  r("kernels", "no_such_kernel", "numpy", "ms", 1.0)]}


def _isolated(site, *argv, **kw):
    """``python -S -m pyllm ARGV`` with the package copy in ``site`` first on the path and only
    the directories of its dependencies after it: no site-packages, so an installed or editable
    pyllm (whose import hook would also serve pyllm._ckernels) cannot leak in."""
    import importlib.util
    deps = set()
    for name in ("numpy", "cffi", "torch"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            deps.add(os.path.dirname(os.path.dirname(spec.origin)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site)] + sorted(deps)))
    env.pop("PYLLM_BACKEND", None)
    return subprocess.run([sys.executable, "-S", "-m", "pyllm"] + list(argv), capture_output=True,
                          text=True, env=env, **kw)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The one `python -m pyllm bench --quick --json F --compare OLD` run, from a copy of the
    package with nothing beside it."""
    site = tmp_path_factory.mktemp("site")
    pkg = os.path.dirname(os.path.abspath(pyllm.__file__))
    shutil.copytree(pkg, site / "pyllm", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path_factory.mktemp("work")
    old = work / "old.json"
    old.write_text(json.dumps(_old_run(bench.machine_info())))
    out = work / "quick.json"
    r = _isolated(site, "bench", "--quick", "--json", str(out), "--compare", str(old),
                  cwd=str(work), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return {"site": site, "work": work, "stdout": r.stdout, "stderr": r.stderr, "json": out,
            "result": json.loads(out.read_text())}


def test_quick_prints_the_machine_block_and_the_three_parts(quick):
    out = quick["stdout"]
    assert re.search(r"^machine: .+\(\w+\), \d+ logical cores, \d+ usable", out, re.M), out
    assert re.search(r"^versions: pyllm [\w.]+, Python [\w.]+, NumPy [\w.]+, .*; pyllm from ",
                     out, re.M), out
    if c_unavailable_reason() is None:
        assert re.search(r"^C kernels: SIMD \w+ \(available: [\w, ]+\), OpenMP (yes|no), \d+ "
                         r"threads; sources sha256 [0-9a-f]{16}$", out, re.M), out
        assert re.search(r"^C build: ", out, re.M), out
        assert re.search(r"geometric-mean speed-up: \d+\.\dx", out), out
        assert re.search(r"^quick\s+c\s+\d+ \(", out, re.M), out  # the training child ran
    for head in ("kernel benchmark", "training benchmark", "sampling benchmark"):
        assert head in out
    assert re.search(r"^quick\s+numpy\s+\d+ \(", out, re.M), out
    assert re.search(r"^pyllm-numpy\s+[\d.]+ \(", out, re.M), out
    for i, part in enumerate(("kernels", "train", "sample")):  # a progress line per part
        assert "[bench] %s (%d of 3)" % (part, i + 1) in quick["stderr"]


def test_quick_json_matches_the_documented_schema(quick):
    res = quick["result"]
    assert bench.check_result(res) is res
    assert res["version"] == 1 and res["quick"] is True and res["threads"] >= 1
    m = res["machine"]
    for k in ("cpu_model", "arch", "platform", "logical_cores", "usable_cores", "c_backend",
              "simd", "simd_available", "openmp", "c_threads", "build_info", "source_hash"):
        assert k in m, k
    assert m["usable_cores"] >= 1 and m["logical_cores"] >= m["usable_cores"]
    assert set(m["versions"]) == {"pyllm", "python", "numpy", "torch"}
    assert m["versions"]["pyllm"] == pyllm.__version__
    assert set(res["parts"]) == {"kernels", "train", "sample"}
    assert all(p["seconds"] > 0 for p in res["parts"].values())
    keys = set()
    for r in res["rows"]:
        for k in ("part", "config", "name", "implementation", "unit", "better"):
            assert isinstance(r[k], str), (k, r)
        assert r["part"] in ("kernels", "train", "sample") and r["config"] == "quick"
        for k in ("median", "min", "max"):
            assert isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0, (k, r)
        assert r["min"] <= r["median"] <= r["max"], r
        assert (r["unit"], r["better"]) in (("ms", "lower"), ("s", "lower"),
                                            ("tokens/s", "higher")), r
        assert r["samples"] >= 1
        keys.add((r["part"], r["name"], r["implementation"]))
    assert len(keys) == len(res["rows"])  # one row per (part, config, name, implementation)
    impls = ["numpy"]
    if c_unavailable_reason() is None:
        impls.append("c")
        if res["threads"] > 1:
            impls.append("c-1thread")
    for kernel in KERNELS:
        for impl in impls:
            assert ("kernels", kernel, impl) in keys, (kernel, impl)
    train = {i for p, _, i in keys if p == "train"}
    sample = {i for p, _, i in keys if p == "sample"}
    assert train >= set(impls[:2]) and sample >= set(impls[:2])
    if c_unavailable_reason() is None:
        assert "c-int8" in sample
    if m["versions"]["torch"]:
        assert "torch" in train
    rss = [r["rss_mib"] for r in res["rows"] if r["part"] == "train"]
    assert all(0 < x < 4096 for x in rss)


def test_quick_runs_without_a_source_tree(quick):
    """The package was a bare copy (nothing beside it) run from another directory: the kernel
    part, the training subprocesses (python -m pyllm.bench) and sampling all ran there."""
    assert sorted(os.listdir(quick["site"])) == ["pyllm"]
    assert quick["result"]["machine"]["pyllm_path"] == str(quick["site"] / "pyllm")
    assert not os.path.exists(os.path.join(quick["work"], "benchmarks"))
    assert {r["part"] for r in quick["result"]["rows"]} == {"kernels", "train", "sample"}
    assert "wrote %s" % quick["json"] in quick["stdout"]


def test_quick_compares_with_an_earlier_run(quick):
    out = quick["stdout"].split("comparison with", 1)[1]
    assert "warning: the machines differ (cpu_model 'Imaginary CPU 9000' -> " in out
    assert re.search(r"lower is better.*higher is\s+better", out, re.S)
    for part, name in (("kernels", "gelu_forward"), ("train", "training step"),
                       ("sample", "generate 30 tokens")):
        assert re.search(r"^%s\s+quick\s+%s\s+numpy\s+\S+\s+\S+\s+\S+\s+[\d.]+x" % (part, name),
                         out, re.M), out
    assert "3 rows compared" in out
    assert re.search(r"not compared: \d+ rows only in the new run, 1 only in the old", out)


def test_quick_runs_on_the_numpy_fallback(tmp_path):
    """Without the compiled extension (the package copied without it) the kernel and sampling
    parts time the NumPy backend alone, and say so."""
    pkg = os.path.dirname(os.path.abspath(pyllm.__file__))
    shutil.copytree(pkg, tmp_path / "site" / "pyllm", ignore=lambda d, names: [
        n for n in names if n == "__pycache__" or n.endswith((".so", ".pyd"))])
    out = tmp_path / "numpy.json"
    r = _isolated(tmp_path / "site", "bench", "kernels", "sample", "--quick", "--json", str(out),
                  cwd=str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^C kernels: unavailable \(.+\): NumPy only$", r.stdout, re.M), r.stdout
    res = bench.check_result(json.loads(out.read_text()))
    assert res["machine"]["c_backend"] is False and res["machine"]["simd"] is None
    assert set(res["parts"]) == {"kernels", "sample"}
    assert {r["implementation"] for r in res["rows"]} == {"numpy"}
    assert len([r for r in res["rows"] if r["part"] == "kernels"]) == 20


def test_compare_of_saved_runs_prints_a_ratio_for_every_row(quick, tmp_path, capsys):
    res = quick["result"]
    assert main(["bench", "--compare", str(quick["json"]), "--new", str(quick["json"])]) == 0
    out = capsys.readouterr().out
    ratios = re.findall(r"^(kernels|train|sample)\s+quick\s+.*\s(\d+\.\d\d)x", out, re.M)
    assert len(ratios) == len(res["rows"]) and {x for _, x in ratios} == {"1.00"}, out
    assert "%d rows compared" % len(res["rows"]) in out and "differ" not in out
    # every median doubled: times are slower now, tokens/s faster
    doubled = dict(res, rows=[dict(r, median=2 * r["median"], min=2 * r["min"],
                                   max=2 * r["max"]) for r in res["rows"]])
    new = tmp_path / "doubled.json"
    new.write_text(json.dumps(doubled))
    assert main(["bench", "--compare", str(quick["json"]), "--new", str(new)]) == 0
    out = capsys.readouterr().out
    ratios = re.findall(r"^(?:kernels|train|sample)\s+quick\s+.*\s(\d+\.\d\d)x", out, re.M)
    assert len(ratios) == len(res["rows"]) and set(ratios) == {"2.00"}, out


def test_compare_says_which_way_is_better(tmp_path, capsys):
    """Times: a ratio < 1 is faster; tokens/s: > 1 is; 'faster'/'slower' only where the min-max
    ranges do not overlap; the summary is the geometric mean of the speed ratios."""
    def run(kern, tps, machine):
        rows = [{"part": "kernels", "config": "b", "name": "gelu_forward",
                 "implementation": "c", "threads": 2, "median": kern, "min": kern * 0.99,
                 "max": kern * 1.01, "unit": "ms", "better": "lower", "samples": 3},
                {"part": "train", "config": "a", "name": "training step",
                 "implementation": "c", "threads": 2, "median": tps, "min": tps * 0.5,
                 "max": tps * 1.5, "unit": "tokens/s", "better": "higher", "samples": 3}]
        return {"version": 1, "machine": machine, "threads": 2, "quick": False, "rows": rows}
    m = {"cpu_model": "X", "arch": "x86_64", "logical_cores": 2, "usable_cores": 2,
         "simd_available": ["portable"], "openmp": True, "versions": {"pyllm": "0.1.0"}}
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(run(4.0, 1000.0, m)))
    new.write_text(json.dumps(run(2.0, 1200.0, dict(m, usable_cores=4))))
    assert main(["bench", "--compare", str(old), "--new", str(new)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^kernels\s+b\s+gelu_forward\s+c\s+ms\s+4\s+2\s+0\.50x faster$", out,
                     re.M), out
    # 1.2x the tokens/s, but the two ranges overlap: no verdict
    assert re.search(r"^train\s+a\s+training step\s+c\s+tokens/s\s+1000\s+1200\s+1\.20x\s*$",
                     out, re.M), out
    assert "warning: the machines differ (usable_cores 2 -> 4)" in out
    assert "2 rows compared; geometric mean of the speed ratios (> 1: faster now): %.2fx" % (
        math.sqrt(2 * 1.2)) in out


@pytest.mark.parametrize("content, why", [
    (None, "cannot read"),
    ("{not json", "is not JSON"),
    ('{"version": 99, "machine": {}, "rows": []}', "schema version 99"),
    ('{"version": 1, "machine": {}, "rows": [{"part": "kernels"}]}', "row 0 has no config"),
    ('[1, 2]', "not a JSON object"),
])
def test_compare_with_a_bad_file_is_a_clear_error(tmp_path, capsys, content, why):
    path = tmp_path / "old.json"
    if content is not None:
        path.write_text(content)
    # were the file not checked first, this would run the whole benchmark before failing
    assert main(["bench", "--compare", str(path)]) == 2
    err = capsys.readouterr()
    assert "error: --compare" in err.err and str(path) in err.err and why in err.err, err.err
    assert "machine:" not in err.out


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    for argv, msg in ((["--threads", "0"], "argument --threads: must be an integer from 1"),
                      (["--threads", "x"], "argument --threads: invalid int value"),
                      (["kernel"], "invalid choice: 'kernel' (choose from kernels, train, "
                                   "sample, all)")):
        with pytest.raises(SystemExit) as exc:
            main(["bench"] + argv)
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err
    missing = tmp_path / "no" / "such" / "dir" / "f.json"
    for argv, msg in ((["--json", str(missing)], "does not exist"),
                      (["--json", str(tmp_path)], "is a directory"),
                      (["--new", "x.json"], "--new goes with --compare")):
        assert main(["bench", "--quick"] + argv) == 2
        err = capsys.readouterr()
        assert msg in err.err and "machine:" not in err.out, err.err


def test_the_benchmark_scripts_are_thin_callers():
    """benchmarks/bench_{kernels,train,sample}.py hold no measuring code of their own."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("bench_kernels.py", "bench_train.py", "bench_sample.py"):
        path = os.path.join(root, "benchmarks", name)
        if not os.path.exists(path):
            pytest.skip("no benchmarks/ directory (not a source checkout)")
        text = open(path, encoding="utf-8").read()
        assert "from pyllm import bench" in text
        assert "perf_counter" not in text and "import subprocess" not in text, name
