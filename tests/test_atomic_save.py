"""Saves are atomic: a process killed with SIGKILL at a random moment of a save -- a tensor file
(``save_safetensors``), a whole training checkpoint (``save_checkpoint``), an int8 model
(``QuantizedGPT.save``), LoRA adapters (``LoRA.save``) or an attention viewer page
(``explore.write_html``) -- leaves at the path
either the complete previous file or the complete new one, never a mix or a torn file; and the
temporary files that such kills leave do not pile up (the next successful save removes those of
dead writers).

Each case forks writer processes from one helper process that has pyllm imported already (a fresh
interpreter per kill would spend its time importing), and kills each writer after a random delay
of up to about four saves. The writer alternates between two versions with different values
everywhere, so every outcome is told apart by content alone.
"""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import pyllm
from pyllm.checkpoint import load_checkpoint
from pyllm.tensorfile import _host_tag, load_safetensors, save_safetensors

pytestmark = pytest.mark.skipif(not (hasattr(os, "fork") and hasattr(signal, "SIGKILL")),
                                reason="needs POSIX fork and SIGKILL")

KILLS = 40
N = 2_000_000  # floats in the tensor file: 8 MB
CKPT_CFG = dict(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_embd=128)
VIEW_T = 512  # tokens of the viewer page: 4 layers x 4 heads, about 5.6 MB

HELPER = textwrap.dedent("""
    import os, select, sys, time
    import numpy as np
    import pyllm
    from pyllm.checkpoint import save_checkpoint
    from pyllm.tensorfile import save_safetensors

    kind, target, scratch = sys.argv[1:4]
    VIEW_T = {VIEW_T}

    def viewer_model():
        tok = pyllm.CharTokenizer("ab")
        cfg = pyllm.GPTConfig(vocab_size=2, block_size=VIEW_T, n_layer=4, n_head=4, n_embd=16)
        return pyllm.GPT(cfg, seed=0), tok
    N, CFG = {N}, {CFG}
    if kind == "tensorfile":
        def save(g, path):  # version g: x = g + 1 everywhere but x[0] = g (a torn file shows)
            x = np.full(N, g + 1.0, np.float32)
            x[0] = g
            save_safetensors(path, {{"x": x}}, {{"gen": str(g)}})
    elif kind == "viewer":
        from pyllm import explore
        from pyllm.tensorfile import atomic_write_text
        model, tok = viewer_model()
        pages = []
        for g in (0, 1):  # version g: the page of "a" * T (g = 0) or "b" * T (g = 1), made by
            explore.write_html(scratch, model, tok, "ab"[g] * VIEW_T, scores=False)  # write_html
            with open(scratch, encoding="utf-8") as f:
                pages.append(f.read())
        def save(g, path):  # then written as write_html writes it (the maps are not recomputed
            atomic_write_text(path, pages[g])  # every time, so that kills land mid-write)
    elif kind == "q8":
        model = pyllm.GPT(pyllm.GPTConfig(**dict(CFG, vocab_size=4096)), seed=0)
        qms = []
        for g in (0, 1):  # version g: every weight g + 1 (q = 127, scale (g + 1) / 127),
            model.params[...] = g + 1.0  # quantized once here so that kills land in writes
            qms.append(pyllm.quantize(model))
        def save(g, path):
            qms[g].save(path)
    elif kind == "lora":
        lora = pyllm.LoRA(pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0), rank=128)
        def save(g, path):  # version g: every adapter number g + 1
            lora.params[...] = g + 1.0
            lora.save(path)
    else:
        model = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0)
        opt = pyllm.AdamW(model)
        def save(g, path):  # version g: params g + 1, moments g + 2 and g + 3, step 10 + g
            model.params[...] = g + 1.0
            opt.m[...], opt.v[...], opt.t = g + 2.0, g + 3.0, g
            save_checkpoint(path, model, opt, {{"step": 10 + g, "rng": [g]}})
    t0 = time.perf_counter()
    for g in (0, 1, 0):  # how long a save takes here (elsewhere: the target keeps its version)
        save(g, scratch)
    print("ready %f" % ((time.perf_counter() - t0) / 3), flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer: save versions 1, 0, 1, ... until killed
            os.close(r)
            g = 1
            while True:
                save(g, target)
                os.write(w, b"s")
                g ^= 1
        os.close(w)
        print("pid %d" % pid, flush=True)
        if sys.stdin.readline().strip() != "reap":
            break
        _, status = os.waitpid(pid, 0)
        saves = 0
        while select.select([r], [], [], 0)[0]:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            saves += len(chunk)
        os.close(r)
        print("reaped %d %d" % (status, saves), flush=True)
""").format(N=N, CFG=CKPT_CFG, VIEW_T=VIEW_T)


def _strays(directory, name):
    """The temp files of target ``name`` in ``directory``: {writer pid: [file names]}."""
    prefix = ".%s.%s." % (name, _host_tag())
    out = {}
    for f in os.listdir(directory):
        if f.startswith(prefix) and f.endswith(".tmp"):
            out.setdefault(int(f[len(prefix):].split(".")[0]), []).append(f)
    return out


def _check_tensorfile(path):
    """The version at ``path`` (0, 1 or 'old'), after checking that it is complete."""
    tensors, meta = load_safetensors(path)
    x = tensors["x"]
    assert set(tensors) == {"x"} and x.shape == (N,) and x.dtype == np.float32
    gen = meta["gen"]
    if gen == "old":
        assert np.all(x == -1.0)
        return gen
    g = int(gen)
    assert x[0] == g and np.all(x[1:] == g + 1.0), "torn file: metadata %r, data differ" % gen
    return g


def _check_viewer(path):
    """The version of the viewer page at ``path`` (0: all "a", 1: all "b", 'old': "abab..."),
    after checking that the page is whole: its end is there and its data decodes."""
    import json
    import re
    from pyllm.viewer import decode_maps
    html = path.read_text(encoding="utf-8")
    assert html.rstrip().endswith("</html>"), "torn page"
    data = json.loads(re.search(r'id="pyllm-data">(.*?)</script>', html, re.S).group(1))
    maps = decode_maps(data["maps"], 4, 4, VIEW_T)
    assert np.abs(maps.sum(-1) - 1).max() < VIEW_T * 0.5 / 65535  # rounding of each weight
    text = "".join(data["tokens"])
    return {"a" * VIEW_T: 0, "b" * VIEW_T: 1, "ab" * (VIEW_T // 2): "old"}[text]


def _check_q8(path):
    """The version of the int8 model at ``path`` (0, 1 or 'old': every weight -1)."""
    qm = pyllm.load(path)
    vals = {float(x) for v in qm.v.values() for x in np.unique(v)}
    assert len(vals) == 1, "torn file: vectors of two versions %s" % vals
    w = vals.pop()
    for m in qm.m.values():
        assert np.all(m.q == (127 if w > 0 else -127)), "torn file: int8 values differ"
        assert np.all(m.scales == np.float32(abs(w)) / np.float32(127)), "torn: scales differ"
    return "old" if w == -1.0 else int(w) - 1


def _check_lora(path):
    """The version of the adapter file at ``path`` (0, 1 or 'old': every number -1)."""
    lora = pyllm.LoRA.load(pyllm.GPT(pyllm.GPTConfig(**CKPT_CFG), seed=0), path)
    vals = np.unique(lora.params)
    assert len(vals) == 1, "torn file: adapters of two versions %s" % vals[:4]
    return "old" if vals[0] == -1.0 else int(vals[0]) - 1


def _check_checkpoint(directory):
    model, optim, state = load_checkpoint(directory)
    g = state["step"] - 10
    if g == -10:  # the old one (step 0)
        assert np.all(model.params == -1.0) and optim["t"] == 0
        return "old"
    assert g in (0, 1), state
    assert np.all(model.params == g + 1.0), "torn checkpoint: params of another version"
    assert np.all(optim["m"] == g + 2.0) and np.all(optim["v"] == g + 3.0)
    assert optim["t"] == g and state["rng"] == [g]
    assert model.config == pyllm.GPTConfig(**CKPT_CFG)
    return g


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tensorfile", "checkpoint", "viewer", "q8", "lora"])
def test_save_is_atomic_under_sigkill(kind, tmp_path):
    if kind == "tensorfile":
        target = tmp_path / "model.safetensors"
        save_safetensors(target, {"x": np.full(N, -1.0, np.float32)}, {"gen": "old"})
        directory, name, check = tmp_path, target.name, _check_tensorfile
    elif kind == "viewer":
        from pyllm import explore
        target = tmp_path / "heads.html"
        cfg = pyllm.GPTConfig(vocab_size=2, block_size=VIEW_T, n_layer=4, n_head=4, n_embd=16)
        explore.write_html(target, pyllm.GPT(cfg, seed=0), pyllm.CharTokenizer("ab"),
                           "ab" * (VIEW_T // 2), scores=False)
        directory, name, check = tmp_path, target.name, _check_viewer
    elif kind == "q8":
        target = tmp_path / "model-q8.safetensors"
        model = pyllm.GPT(pyllm.GPTConfig(**dict(CKPT_CFG, vocab_size=4096)), seed=0)
        model.params[...] = -1.0
        pyllm.quantize(model).save(target)
        directory, name, check = tmp_path, target.name, _check_q8
    elif kind == "lora":
        target = tmp_path / "adapters.safetensors"
        lora = pyllm.LoRA(pyllm.GPT(pyllm.GPTConfig(**CKPT_CFG), seed=0), rank=128)
        lora.params[...] = -1.0
        lora.save(target)
        directory, name, check = tmp_path, target.name, _check_lora
    else:
        target = tmp_path / "run"
        model = pyllm.GPT(pyllm.GPTConfig(**CKPT_CFG), seed=0)
        model.params[...] = -1.0
        pyllm.checkpoint.save_checkpoint(target, model, pyllm.AdamW(model), {"step": 0, "rng": [0]})
        directory, name, check = target, "checkpoint.safetensors", _check_checkpoint
    assert check(target) == "old"
    old_bytes = (directory / name).read_bytes()

    env = dict(os.environ, PYLLM_BACKEND="numpy", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(pyllm.__file__))]
                                          + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    scratch = tmp_path / "scratch" / (name if kind != "checkpoint" else "run")
    scratch.parent.mkdir()
    helper = subprocess.Popen([sys.executable, "-c", HELPER, kind, str(target), str(scratch)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(line):
        helper.stdin.write(line + "\n")
        helper.stdin.flush()
        reply = helper.stdout.readline().split()
        assert reply, "the helper process died"
        return reply

    try:
        ready = helper.stdout.readline().split()
        assert ready and ready[0] == "ready", "the helper process did not start"
        save_time = float(ready[1])
        rng = random.Random(2026)
        seen, mid_write, saves, pids = set(), 0, 0, set()
        for _ in range(KILLS):
            pid = int(ask("go")[1])
            reused = pid in pids  # (a recycled pid would make an old temp file look live)
            pids.add(pid)
            time.sleep(rng.uniform(0.0, 4.0 * save_time))
            os.kill(pid, signal.SIGKILL)
            _, status, n = ask("reap")
            assert os.WIFSIGNALED(int(status)) and os.WTERMSIG(int(status)) == signal.SIGKILL
            saves += int(n)
            # the path holds a complete version: the old one, or one the writer finished
            seen.add(check(target))
            # temp files: only this writer's can remain, once it has finished a save (which
            # removes those of earlier, dead writers); a writer has one temp file at a time
            strays = _strays(directory, name)
            if not reused:
                assert all(len(files) == 1 for files in strays.values()), strays
                if int(n) >= 1:
                    assert set(strays) <= {pid}, strays
            mid_write += pid in strays
    finally:
        helper.kill()
        helper.wait()
    # the test exercised something: kills landed mid-write (a temp file was left), and writers
    # completed saves (so the path changed version under the kills)
    assert mid_write >= 5 and saves >= 1 and seen - {"old"}, (mid_write, saves, seen)
    # a save after all that leaves no temp file behind, and the old content is long gone
    save_safetensors(directory / name, {"x": np.zeros(1, np.float32)})
    assert _strays(directory, name) == {}
    assert [f for f in os.listdir(directory) if name in f] == [name]
    assert (directory / name).read_bytes() != old_bytes
