"""Export to the Hugging Face GPT-2 layout (pyllm.hf_export, `pyllm export-hf`, GPT.save_hf):
round trips of char and BPE models through pyllm.load_gpt2 (weights bit for bit, tokenizers id
for id), the config, transformers' GPT2LMHeadModel and tokenizers reading the directory (where
installed), the command line end to end, every refused input with its message, and no
half-written directory when a write fails."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pyllm
from pyllm import hf_export
from pyllm.checkpoint import load_gpt2_tokenizer
from pyllm.tensorfile import read_safetensors_header
from pyllm.tokenizer import EOT_TOKEN, bytes_to_unicode

TEXT = ("Hello, World! It's a test; they'll see.  Two  spaces, glad,\ttabs\t\tand\nnew\n\nlines\r\n"
        "naïve café — “quotes” ½ 123 4567890 x² 😀🚀 日本語のテキスト Ünïcödé e\u0301\u00a0nbsp "
        "IT'S <|endoftext|> after the end\n" * 3)
SAMPLES = [TEXT, "", " ", "\n\n\n", "It's 2024", "  leading and trailing spaces  ", "<|endoftext|>",
           "a<|endoftext|>b", "日本語", "😀😀 🚀", "e\u0301", "tabs\t\t\tand\n  \n spaces"]


def _model(vocab_size, seed=0, **kw):
    cfg = dict(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16)
    cfg.update(kw)
    m = pyllm.GPT(pyllm.GPTConfig(**cfg), seed=seed)
    r = np.random.default_rng(seed)          # every weight non-trivial, biases and gains too
    m.params[...] = r.standard_normal(m.params.shape).astype(np.float32) * 0.3
    return m


@pytest.fixture(scope="module")
def bpe():
    return pyllm.BPETokenizer.train(TEXT * 4 + open(pyllm.model.__file__).read()[:20000], 420)


@pytest.fixture(scope="module")
def char():
    return pyllm.CharTokenizer.train(TEXT)


def _same_model(a, b):
    assert a.config == b.config
    assert np.array_equal(a.params, b.params)          # bit for bit
    for k, v in a.state_dict().items():
        assert np.array_equal(v, b.state_dict()[k]), k


def _check_config(d, model, eot):
    with open(os.path.join(d, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    c = model.config
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert (cfg["vocab_size"], cfg["n_positions"], cfg["n_ctx"], cfg["n_embd"], cfg["n_layer"],
            cfg["n_head"]) == (c.vocab_size, c.block_size, c.block_size, c.n_embd, c.n_layer,
                               c.n_head)
    assert cfg["activation_function"] == "gelu_new"
    assert cfg["resid_pdrop"] == cfg["embd_pdrop"] == cfg["attn_pdrop"] == 0.0
    from pyllm.backend.numpy import LN_EPS
    assert cfg["layer_norm_epsilon"] == LN_EPS == 1e-5      # the C kernels' LN_EPS is 1e-5f too
    assert cfg["tie_word_embeddings"] is True
    assert cfg["bos_token_id"] == cfg["eos_token_id"] == eot


def _check_weights_file(d, model):
    """model.safetensors in the public GPT-2 layout: GPT-2 names, no prefix, F32, (in, out)."""
    header, _ = read_safetensors_header(os.path.join(d, "model.safetensors"))
    assert header.pop("__metadata__") == {"format": "pt"}
    shapes = dict(pyllm.model.param_shapes(model.config))
    assert set(header) == set(shapes)               # no lm_head, no attn.bias, no prefix
    for name, entry in header.items():
        assert entry["dtype"] == "F32" and tuple(entry["shape"]) == shapes[name]
    C = model.config.n_embd
    assert tuple(header["h.0.attn.c_attn.weight"]["shape"]) == (C, 3 * C)   # Conv1D (in, out)


def test_char_model_round_trip(tmp_path, char):
    m = _model(char.vocab_size, seed=1)
    d = str(tmp_path / "char")
    assert m.save_hf(d, char) == d
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors", "tokenizer.json",
                                     "tokenizer.txt", "tokenizer_config.json"]
    _check_config(d, m, None)
    _check_weights_file(d, m)
    g, tok = pyllm.load_gpt2(d, with_tokenizer=True)
    _same_model(g, m)
    assert isinstance(tok, pyllm.CharTokenizer) and tok == char
    assert load_gpt2_tokenizer(os.path.join(d, "model.safetensors")) == char
    for s in SAMPLES + [TEXT[::-1], TEXT[5:77]]:
        ids = char.encode(s)
        assert tok.encode(s) == ids and tok.decode(ids) == s
    with pytest.raises(ValueError, match="unknown character"):
        tok.encode("~")
    # tokenizer.json: every character to its pyllm id, split per code point, fused back
    with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
        hf = json.load(f)
    assert hf["model"]["type"] == "WordLevel"
    assert hf["model"]["vocab"] == {ch: i for i, ch in enumerate(char.chars)}
    assert hf["model"]["unk_token"] not in hf["model"]["vocab"]
    assert hf["decoder"] == {"type": "Fuse"}
    with open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8") as f:
        tc = json.load(f)
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast" and tc["model_max_length"] == 32
    assert not tc["clean_up_tokenization_spaces"]


def test_bpe_model_round_trip(tmp_path, bpe):
    m = _model(bpe.vocab_size, seed=2)
    d = str(tmp_path / "bpe")
    hf_export.export_hf(m, d, bpe)
    assert sorted(os.listdir(d)) == ["config.json", "merges.txt", "model.safetensors",
                                     "tokenizer_config.json", "vocab.json"]
    _check_config(d, m, bpe.eot_token)
    _check_weights_file(d, m)
    _same_model(pyllm.load_gpt2(d), m)
    tok = pyllm.BPETokenizer.from_gpt2(d)          # what GPT-2 tooling reads: id-exact
    assert tok == bpe and load_gpt2_tokenizer(d) == bpe
    for s in SAMPLES + [TEXT[::-1], TEXT[3:200]]:
        assert tok.encode(s) == bpe.encode(s)
        assert tok.decode(bpe.encode(s)) == s
    # GPT-2's byte-level files: ids by token string, merges in rank order
    b2u = bytes_to_unicode()
    with open(os.path.join(d, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    assert len(vocab) == bpe.vocab_size and vocab[EOT_TOKEN] == bpe.eot_token
    assert vocab["Ġ"] == bpe.encode(" ")[0] and vocab["Ċ"] == bpe.encode("\n")[0]
    for s, i in vocab.items():
        if i != bpe.eot_token:
            assert "".join(b2u[b] for b in bpe.token_bytes(i)) == s
    with open(os.path.join(d, "merges.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[0] == "#version: 0.2" and lines[-1] == ""
    assert [tuple(vocab[t] for t in ln.split(" ")) for ln in lines[1:-1]] == \
        [(a, b) for a, b, _ in bpe.merges]


def test_gpt2_layout_tokenizer_reexports(tmp_path):
    """A tokenizer read from GPT-2 files (byte ids not 0..255, EOT in the middle) goes back out
    unchanged: the GPT-2 files are rewritten with the same ids."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: i for i, b in enumerate(b2u)}     # GPT-2's own byte order
    vocab["Ġ" + "t"], vocab[EOT_TOKEN], vocab["Ġt" + "h"] = 256, 257, 258
    src = tmp_path / "src"
    src.mkdir()
    (src / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (src / "merges.txt").write_text("#version: 0.2\nĠ t\nĠt h\n", encoding="utf-8")
    tok = pyllm.BPETokenizer.from_gpt2(src)
    hf_export.export_hf(_model(tok.vocab_size), tmp_path / "out", tok)
    with open(tmp_path / "out" / "vocab.json", encoding="utf-8") as f:
        assert json.load(f) == vocab
    assert pyllm.BPETokenizer.from_gpt2(tmp_path / "out") == tok


def test_trained_model_through_the_cli(tmp_path):
    """A model trained briefly by `pyllm train` (BPE), exported by `pyllm export-hf`, reads back
    as the same model and tokenizer, with the same logits."""
    from pyllm.train import TrainConfig, train
    (tmp_path / "t.txt").write_text(TEXT * 20, encoding="utf-8")
    run = str(tmp_path / "run")
    train(TrainConfig(data=str(tmp_path / "t.txt"), tokenizer="bpe", vocab_size=300, out=run,
                      steps=4, n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4,
                      eval_interval=4, eval_iters=1), progress=False)
    env = dict(os.environ)
    env.pop("PYLLM_BACKEND", None)
    out = str(tmp_path / "hf")
    r = subprocess.run([sys.executable, "-m", "pyllm", "export-hf", "--ckpt", run, "--out", out],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote %s" % out in r.stderr and "vocab.json" in r.stderr
    m, tok = pyllm.load(run), pyllm.load_tokenizer(os.path.join(run, "tokenizer.txt"))
    g, tok2 = pyllm.load_gpt2(out, with_tokenizer=True)
    _same_model(g, m)
    assert tok2 == tok
    ids = np.array([tok.encode(TEXT)[:16]])
    assert np.array_equal(g.forward(ids), m.forward(ids))
    # --gpt2 re-exports an exported directory, and --force replaces the earlier export
    from pyllm.cli import main
    assert main(["export-hf", "--gpt2", out, "--out", out, "--force"]) == 0
    _same_model(pyllm.load_gpt2(out), m)


def _c_or_numpy():
    from pyllm.backend import c_unavailable_reason
    return "numpy" if c_unavailable_reason() else "c"


def test_transformers_reads_the_export(tmp_path, bpe, char):
    """GPT2LMHeadModel.from_pretrained gives pyllm's logits (C backend) to ~1e-6 of each row's
    scale, and transformers' tokenizers read the tokenizer files to the same ids."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    prev, verbosity = pyllm.get_backend(), transformers.logging.get_verbosity()
    pyllm.set_backend(_c_or_numpy())
    transformers.logging.set_verbosity_error()    # not "sequence longer than model_max_length"
    worst = 0.0
    try:
        for name, tok in (("bpe", bpe), ("char", char)):
            m = _model(tok.vocab_size, seed=7, n_layer=3, n_embd=32, n_head=4)
            d = str(tmp_path / name)
            m.save_hf(d, tok)
            hf = transformers.GPT2LMHeadModel.from_pretrained(d)
            hf.eval()
            assert hf.config.activation_function == "gelu_new"
            assert hf.config.layer_norm_epsilon == 1e-5 and hf.config.tie_word_embeddings
            ids = np.array([tok.encode(TEXT)[:32], tok.encode(TEXT[::-1])[:32]])
            with torch.no_grad():
                got = hf(torch.tensor(ids)).logits.numpy()
            want = m.forward(ids)
            rel = np.abs(got - want).max(-1) / np.abs(want).max(-1)
            worst = max(worst, float(rel.max()))
            assert rel.max() < 1e-4, (name, rel.max())
            if name == "bpe":
                kinds = [getattr(transformers, k) for k in ("GPT2Tokenizer", "GPT2TokenizerFast",
                                                            "AutoTokenizer") if
                         hasattr(transformers, k)]
            else:
                kinds = [transformers.AutoTokenizer, transformers.PreTrainedTokenizerFast]
            for kind in kinds:
                ht = kind.from_pretrained(d)
                for s in SAMPLES:
                    ids = tok.encode(s)
                    assert list(ht.encode(s, add_special_tokens=False)) == ids, (kind, s)
                    assert ht.decode(ids) == s, (kind, s)
            if name == "char":
                with pytest.raises(Exception, match="UNK|unk"):
                    ht.encode("~")      # an unknown character is an error there too
    finally:
        pyllm.set_backend(prev)
        transformers.logging.set_verbosity(verbosity)
    print("max |transformers - pyllm| / row scale: %.2e" % worst)


# ---- refused inputs ---------------------------------------------------------------------------

def test_refused_models(tmp_path, char):
    out = str(tmp_path / "out")
    for kind in ("favor", "linear"):
        m = _model(char.vocab_size, attention=kind, n_features=8)
        with pytest.raises(ValueError, match="attention=%r.*softmax attention only" % kind):
            m.save_hf(out, char)
    m = _model(char.vocab_size)
    with pytest.raises(TypeError, match=r"LoRA.*lora\.merged\(\)"):
        hf_export.export_hf(pyllm.LoRA(m, rank=2), out, char)
    with pytest.raises(TypeError, match="int8.*float32 model it was quantized from"):
        hf_export.export_hf(pyllm.quantize(m), out, char)
    with pytest.raises(TypeError, match="Classifier"):
        hf_export.export_hf(pyllm.Classifier(m, 2), out, char)
    with pytest.raises(TypeError, match="needs a pyllm.GPT"):
        hf_export.export_hf("model", out, char)
    bad = _model(char.vocab_size)
    bad.params[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        bad.save_hf(out, char)
    assert not os.path.exists(out) and os.listdir(tmp_path) == []


def test_refused_tokenizers(tmp_path, char, bpe):
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match=r"tokenizer has %d ids but the model's vocab_size is "
                       r"%d.*the tokenizer argument" % (char.vocab_size, char.vocab_size + 1)):
        _model(char.vocab_size + 1).save_hf(out, char)
    with pytest.raises(ValueError, match="has %d ids but" % bpe.vocab_size):
        _model(50257).save_hf(out, bpe)
    with pytest.raises(TypeError, match="CharTokenizer or BPETokenizer"):
        _model(5).save_hf(out, "abcde")
    # ids 257 and 259 both denote b"abc": GPT-2's vocab.json cannot say that
    dup = pyllm.BPETokenizer([(97, 98), (256, 99), (98, 99), (97, 258)])
    with pytest.raises(ValueError, match="ids 257 and 259 both denote 'abc'"):
        _model(dup.vocab_size).save_hf(out, dup)
    other = pyllm.BPETokenizer([], special_token="<|end|>")
    with pytest.raises(ValueError, match="special token is '<\\|end\\|>'"):
        _model(other.vocab_size).save_hf(out, other)
    spelled = EOT_TOKEN.encode()           # an ordinary token spelled like the special one
    merges = [(spelled[0], spelled[1])] + [(256 + i, b) for i, b in enumerate(spelled[2:])]
    fake = pyllm.BPETokenizer(merges)
    with pytest.raises(ValueError, match="both denote '<\\|endoftext\\|>'"):
        _model(fake.vocab_size).save_hf(out, fake)
    assert os.listdir(tmp_path) == []
    # no tokenizer at all: weights and config only
    m = _model(char.vocab_size)
    m.save_hf(out)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    _same_model(pyllm.load_gpt2(out), m)
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        load_gpt2_tokenizer(out)


def test_output_directory_rules(tmp_path, char, bpe):
    m = _model(char.vocab_size)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="directory .*file is an existing file"):
        m.save_hf(tmp_path / "file", char)
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.md").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty: pass force=True"):
        m.save_hf(full, char)
    with pytest.raises(FileExistsError, match="holds 'notes.md', which an export does not"):
        m.save_hf(full, char, force=True)
    assert os.listdir(full) == ["notes.md"]
    # an empty directory is fine; a trailing slash too
    (tmp_path / "empty").mkdir()
    m.save_hf(str(tmp_path / "empty") + os.sep, char)
    assert pyllm.load_gpt2(tmp_path / "empty", with_tokenizer=True)[1] == char
    # force replaces an earlier export whole: a BPE export over a char one keeps no char file
    mb = _model(bpe.vocab_size, seed=3)
    with pytest.raises(FileExistsError, match="not empty"):
        mb.save_hf(tmp_path / "empty", bpe)
    mb.save_hf(tmp_path / "empty", bpe, force=True)
    assert "tokenizer.txt" not in os.listdir(tmp_path / "empty")
    g, tok = pyllm.load_gpt2(tmp_path / "empty", with_tokenizer=True)
    _same_model(g, mb)
    assert tok == bpe
    os.symlink(tmp_path / "full", tmp_path / "link")
    with pytest.raises(FileExistsError, match="is a symbolic link"):
        m.save_hf(tmp_path / "link", char)
    os.unlink(tmp_path / "link")
    # new parents are made; nothing else is left beside the exports
    m.save_hf(tmp_path / "a" / "b" / "c", char)
    assert os.listdir(tmp_path / "a" / "b") == ["c"]
    assert sorted(os.listdir(tmp_path)) == ["a", "empty", "file", "full"]


def test_cli_errors(tmp_path, capsys, char):
    from pyllm.cli import main
    run = tmp_path / "run"
    run.mkdir()
    m = _model(char.vocab_size)
    m.save(str(run / "model.safetensors"))
    char.save(str(run / "tokenizer.txt"))
    (tmp_path / "file").write_text("x")

    def err(*argv):
        assert main(list(argv)) == 2
        e = capsys.readouterr().err
        assert e.startswith("error: ") and "Traceback" not in e
        return e

    assert "--out %s is an existing file" % (tmp_path / "file") in err(
        "export-hf", "--ckpt", str(run), "--out", str(tmp_path / "file"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.txt").write_text("x")
    assert "not empty: pass --force" in err("export-hf", "--ckpt", str(run), "--out", str(full))
    assert "which an export does not write: refusing to replace that directory even with " \
        "--force" in err("export-hf", "--ckpt", str(run), "--out", str(full), "--force")
    other = pyllm.CharTokenizer("abc")
    other.save(str(tmp_path / "other.txt"))
    assert "the tokenizer has 3 ids but the model's vocab_size is %d" % char.vocab_size in \
        err("export-hf", "--ckpt", str(run), "--tokenizer-file", str(tmp_path / "other.txt"),
            "--out", str(tmp_path / "o"))
    pyllm.quantize(m).save(str(tmp_path / "q8.safetensors"))
    assert "int8 (Q8_0) model cannot be exported" in err(
        "export-hf", "--ckpt", str(tmp_path / "q8.safetensors"), "--tokenizer-file",
        str(run / "tokenizer.txt"), "--out", str(tmp_path / "o"))
    pyllm.LoRA(m, rank=2).save(str(tmp_path / "adapters.safetensors"))
    assert "LoRA adapter file" in err("export-hf", "--ckpt",
                                      str(tmp_path / "adapters.safetensors"),
                                      "--out", str(tmp_path / "o"))
    fav = _model(char.vocab_size, attention="favor", n_features=8)
    fav.save(str(tmp_path / "favor.safetensors"))
    assert "softmax attention only" in err(
        "export-hf", "--ckpt", str(tmp_path / "favor.safetensors"), "--tokenizer-file",
        str(run / "tokenizer.txt"), "--out", str(tmp_path / "o"))
    clf = tmp_path / "clf"
    pyllm.Classifier(m, 2).save(str(clf))
    char.save(str(clf / "tokenizer.txt"))
    assert "classifier directory" in err("export-hf", "--ckpt", str(clf), "--out",
                                         str(tmp_path / "o"))
    (run / "tokenizer.txt").unlink()
    assert "no tokenizer found at" in err("export-hf", "--ckpt", str(run), "--out",
                                          str(tmp_path / "o"))
    assert not os.path.exists(tmp_path / "o")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    # the char model exported here, then re-exported with --gpt2 (its tokenizer.txt is read)
    char.save(str(run / "tokenizer.txt"))
    assert main(["export-hf", "--ckpt", str(run), "--out", str(tmp_path / "o")]) == 0
    assert main(["export-hf", "--gpt2", str(tmp_path / "o"), "--out", str(tmp_path / "o2")]) == 0
    assert pyllm.load_gpt2(tmp_path / "o2", with_tokenizer=True)[1] == char


# ---- failures leave no half-written export -----------------------------------------------------

def test_failed_write_leaves_nothing(tmp_path, monkeypatch, bpe, char):
    import pyllm.tensorfile as tf
    real = tf.atomic_write_text
    calls = []

    def failing(path, text, *a, **k):   # model.safetensors is written; the second text fails
        calls.append(os.path.basename(path))
        if len(calls) == 2:
            raise OSError(28, "No space left on device (simulated)")
        return real(path, text, *a, **k)

    mb, mc = _model(bpe.vocab_size), _model(char.vocab_size, seed=4)
    monkeypatch.setattr(tf, "atomic_write_text", failing)
    with pytest.raises(OSError, match="simulated"):
        mb.save_hf(tmp_path / "new", bpe)
    assert calls == ["config.json", "vocab.json"]
    assert os.listdir(tmp_path) == []                     # no target, no temporary directory
    # over an earlier export with force: the earlier one stays, whole
    monkeypatch.setattr(tf, "atomic_write_text", real)
    mc.save_hf(tmp_path / "old", char)
    before = {n: (tmp_path / "old" / n).read_bytes() for n in os.listdir(tmp_path / "old")}
    calls.clear()
    monkeypatch.setattr(tf, "atomic_write_text", failing)
    with pytest.raises(OSError, match="simulated"):
        mb.save_hf(tmp_path / "old", bpe, force=True)
    assert os.listdir(tmp_path) == ["old"]
    assert {n: (tmp_path / "old" / n).read_bytes() for n in os.listdir(tmp_path / "old")} == before
    # the swap itself failing: the earlier export is put back
    monkeypatch.setattr(tf, "atomic_write_text", real)
    real_rename = os.rename
    renames = []

    def rename(a, b):
        renames.append((a, b))
        if len(renames) == 2:          # old moved aside; moving the new one in fails
            raise OSError(5, "I/O error (simulated)")
        return real_rename(a, b)

    monkeypatch.setattr(hf_export.os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        mb.save_hf(tmp_path / "old", bpe, force=True)
    monkeypatch.setattr(hf_export.os, "rename", real_rename)
    assert os.listdir(tmp_path) == ["old"]
    assert {n: (tmp_path / "old" / n).read_bytes() for n in os.listdir(tmp_path / "old")} == before
    assert pyllm.load_gpt2(tmp_path / "old", with_tokenizer=True)[1] == char
