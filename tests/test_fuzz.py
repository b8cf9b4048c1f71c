"""Fuzzing the file loaders: thousands of random mutations (byte flips, truncations, insertions,
deletions, duplicated spans, changed digits) of real files written by pyllm -- a safetensors file,
a model file (softmax, favor and int8), LoRA adapters, a training checkpoint, a character and a BPE tokenizer file. Every load must either
succeed with a valid result or raise the loader's documented exception naming the file; any other
exception, a crash or a hang fails. The cases run in a child process (tests/_fuzz_loaders.py)
under a time limit. PYLLM_FUZZ_CASES=N scales the number of cases per loader (default 600, 3000
in all); PYLLM_FUZZ_SEED changes the seed.

Also here: hostile files that random mutation would rarely produce (deep JSON nesting, integers
beyond int(), a config that claims 10^8 layers), each of which once escaped as an undocumented
exception or hung."""
import json
import os
import subprocess
import sys

import pytest

import pyllm
from pyllm.checkpoint import CheckpointError, load, load_checkpoint, load_gpt2, save_checkpoint
from pyllm.tensorfile import load_safetensors, save_safetensors
from pyllm.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "_fuzz_loaders.py")
CASES = int(os.environ.get("PYLLM_FUZZ_CASES", "600"))
SEED = int(os.environ.get("PYLLM_FUZZ_SEED", "20261128"))
KINDS = ["safetensors", "model", "favor-model", "q8-model", "lora", "checkpoint",
         "char-tokenizer", "bpe-tokenizer"]
DOCUMENTED = {"safetensors": "TensorFileError", "model": "CheckpointError",
              "favor-model": "CheckpointError", "q8-model": "CheckpointError",
              "lora": "CheckpointError",
              "checkpoint": "CheckpointError", "char-tokenizer": "ValueError",
              "bpe-tokenizer": "ValueError"}


@pytest.mark.parametrize("kind", KINDS)
def test_fuzzed_files_load_or_raise_the_documented_error(kind, tmp_path):
    # the child imports the same pyllm as this process
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(pyllm.__file__))]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    limit = 60 + CASES * 0.05
    try:
        r = subprocess.run([sys.executable, DRIVER, kind, str(CASES), str(SEED), str(tmp_path)],
                           capture_output=True, text=True, timeout=limit, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("%s: the fuzz cases did not finish in %.0f s (a hang?)" % (kind, limit))
    assert r.returncode == 0, "the fuzz child died (exit %d):\n%s" % (r.returncode,
                                                                    r.stderr[-4000:])
    report = json.loads(r.stdout.strip().splitlines()[-1])
    failure = report["failure"]
    assert failure is None, ("case %(case)d: %(why)s: %(type)s: %(message)s\n"
                             "(the file is kept at %(file)s)\n%(traceback)s" % failure)
    counts = report["counts"]
    assert sum(counts.values()) == CASES
    # both outcomes were exercised, and the only error was the documented one
    assert counts.get("ok", 0) > 0 and set(counts) - {"ok"} == {DOCUMENTED[kind]}, counts
    assert report["slowest_s"] < 5.0, report  # no pathological case (e.g. a huge allocation)


# ---- hostile files that random mutations rarely reach ------------------------------------------

CFG = dict(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=8)
DEEP = "[" * 100000 + "]" * 100000


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    model = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0)
    save_checkpoint(str(d), model, pyllm.AdamW(model), {"step": 3, "rng": [1, 2]})
    return load_safetensors(d / "checkpoint.safetensors")


def _rewrite(tmp_path, saved, **meta_changes):
    tensors, meta = saved
    d = tmp_path / "hostile"
    d.mkdir(exist_ok=True)
    save_safetensors(d / "checkpoint.safetensors", tensors, dict(meta, **meta_changes))
    return d


def _state(saved, **changes):
    st = json.loads(saved[1]["state"])
    st.update(changes)
    return json.dumps(st)


@pytest.mark.parametrize("case", ["deep-config", "deep-state", "inf-optim_t", "float-optim_t",
                                  "negative-step", "bool-step", "huge-n_layer", "huge-int"])
def test_hostile_checkpoints_raise_checkpointerror(case, tmp_path, saved_checkpoint):
    cfg = json.loads(saved_checkpoint[1]["config"])
    changes = {
        "deep-config": {"config": DEEP},
        "deep-state": {"state": DEEP},
        "inf-optim_t": {"state": _state(saved_checkpoint, optim_t=1).replace(
            '"optim_t": 1', '"optim_t": 1e999')},
        "float-optim_t": {"state": _state(saved_checkpoint, optim_t=2.5)},
        "negative-step": {"state": _state(saved_checkpoint, step=-1)},
        "bool-step": {"state": _state(saved_checkpoint, step=True)},
        "huge-n_layer": {"config": json.dumps(dict(cfg, n_layer=10**8))},  # once: a hang
        "huge-int": {"config": json.dumps(cfg).replace('"n_layer": 1', '"n_layer": ' + "9" * 5000)},
    }[case]
    d = _rewrite(tmp_path, saved_checkpoint, **changes)
    with pytest.raises(CheckpointError, match="hostile"):
        load_checkpoint(d)
    if case in ("deep-config", "huge-n_layer", "huge-int"):
        with pytest.raises(CheckpointError, match="hostile"):
            load(d)


def test_the_unmodified_checkpoint_loads(tmp_path, saved_checkpoint):
    """The hostile cases above differ from a loadable file only in what they change."""
    model, opt, state = load_checkpoint(_rewrite(tmp_path, saved_checkpoint))
    assert state["step"] == 3 and opt["t"] == 0 and model.config == pyllm.GPTConfig(**CFG)


@pytest.mark.parametrize("n_head", ["1e999", '"x"', "[2]"])
def test_gpt2_config_json_hostile(tmp_path, n_head):
    model = pyllm.GPT(pyllm.GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2,
                                      n_embd=8), seed=0)
    model.save(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text('{"n_head": %s}' % n_head)
    with pytest.raises(CheckpointError):
        load_gpt2(tmp_path)
    (tmp_path / "config.json").write_text(DEEP)
    with pytest.raises(CheckpointError, match="config.json"):
        load_gpt2(tmp_path)


def _tokenizer_lines(tmp_path, kind):
    p = tmp_path / "tok.txt"
    if kind == "char":
        CharTokenizer.train("hello").save(p)
    else:
        BPETokenizer.train("hello hello world", 260).save(p)
    return p, p.read_text(encoding="utf-8").split("\n")


@pytest.mark.parametrize("kind, line, text", [
    ("char", 1, "chars " + "9" * 5000),              # int() refuses > 4300 digits (3.11+)
    ("char", 2, "9" * 5000),
    ("bpe", 1, "vocab_size " + "9" * 5000),
    ("bpe", 2, "special 259 " + DEEP),                # json.loads: RecursionError
], ids=["char-count", "char-code-point", "bpe-vocab_size", "bpe-deep-special"])
def test_hostile_tokenizer_files_raise_valueerror_naming_the_file(tmp_path, kind, line, text):
    p, lines = _tokenizer_lines(tmp_path, kind)
    load_tokenizer(p)  # loads as written
    lines[line] = text
    p.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match="tok.txt: line %d" % (line + 1)):
        load_tokenizer(p)
