"""CLI errors say what was wrong, the value, and the way out (one ``error:`` line, status 2)."""
import numpy as np
import pytest

import pyllm
from pyllm.cli import main


@pytest.fixture
def ckpt(tmp_path):
    tok = pyllm.CharTokenizer.train("abcdefgh \n")
    model = pyllm.GPT(pyllm.GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1,
                                      n_head=2, n_embd=8), seed=0)
    d = tmp_path / "run"
    d.mkdir()
    model.save(str(d / "model.safetensors"))
    tok.save(str(d / "tokenizer.txt"))
    return str(d / "model.safetensors")


def run(capsys, argv):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    if isinstance(rc, str):   # SystemExit("error: ..."): Python prints it to stderr, status 1
        err, rc = err + rc + "\n", 1
    return rc, err


@pytest.mark.parametrize("argv, words", [
    (["sample", "--ckpt", "{c}", "--prompt", "xyz"],
     ["the prompt 'xyz' cannot be encoded", "use only characters the model's tokenizer knows"]),
    (["sample", "--ckpt", "{c}", "--prompt", ""],
     ["encodes to no tokens", "give a non-empty --prompt"]),
    (["sample", "--ckpt", "{c}", "--prompt", "ab", "--input", "data"],
     ["--input 'data' needs --instruction", "use --prompt"]),
    (["heads", "--ckpt", "{c}", "--text", "a"],
     ["the text is 1 token(s)", "at least 2", "longer --text"]),
])
def test_cli_errors_name_the_value_and_the_way_out(capsys, ckpt, argv, words):
    rc, err = run(capsys, [a.replace("{c}", ckpt) for a in argv])
    assert rc not in (0, None), err
    assert err.count("error:") == 1 and "Traceback" not in err
    for w in words:
        assert w in err, err


def test_quantizing_an_int8_file_says_what_to_do(capsys, ckpt, tmp_path):
    q = str(tmp_path / "q8.safetensors")
    assert main(["quantize", "--ckpt", ckpt, "--out", q]) in (0, None)
    np.testing.assert_array_equal(pyllm.load(q).config.to_dict()["vocab_size"],
                                  pyllm.load(ckpt).config.vocab_size)
    rc, err = run(capsys, ["quantize", "--ckpt", q, "--out", str(tmp_path / "q2.safetensors")])
    assert rc not in (0, None)
    assert "already an int8 model" in err and "pyllm sample --ckpt %s" % q in err
