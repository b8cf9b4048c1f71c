"""Instruction data: the Alpaca-style prompt string by hand, batches whose mask covers exactly the
response tokens (changing the prompt's or the padding's targets changes nothing), errors by
name, and a model that learns a toy instruction set through the masked loss."""
import numpy as np
import pytest

import pyllm
from pyllm.finetune import format_instruction, instruction_batch

ENTRY = {"instruction": "Reverse the word.", "input": "abc", "output": "cba"}


def test_the_prompt_string_by_hand():
    head = ("Below is an instruction that describes a task. Write a response that "
            "appropriately completes the request.\n\n### Instruction:\nReverse the word.")
    assert format_instruction(ENTRY) == head + "\n\n### Input:\nabc\n\n### Response:\n"
    assert format_instruction(ENTRY, with_output=True).endswith("### Response:\ncba")
    no_input = dict(ENTRY, input="")
    assert format_instruction(no_input) == head + "\n\n### Response:\n"
    assert format_instruction({"instruction": "Say hi.", "output": "hi"}).endswith(
        "Say hi.\n\n### Response:\n")
    with pytest.raises(ValueError, match="lacks 'instruction'"):
        format_instruction({"input": "x", "output": "y"})
    with pytest.raises(TypeError, match="must be a dict"):
        format_instruction("Reverse the word.")


def test_batches_mask_the_response_only():
    text = format_instruction(ENTRY, with_output=True) + format_instruction(
        {"instruction": "Say hi.", "output": "hello"}, with_output=True) + "#"
    tok = pyllm.CharTokenizer.train(text)
    end = tok.encode("#")[0]
    entries = [ENTRY, {"instruction": "Say hi.", "output": "hello"}]
    x, y, mask = instruction_batch(tok, entries, block_size=200, end_id=end)
    for b, e in enumerate(entries):
        want = tok.encode(e["output"]) + [end]
        assert list(y[b][mask[b]]) == want                 # exactly the response, then the end
        n = len(tok.encode(format_instruction(e, with_output=True))) + 1 - 1
        assert not mask[b, n:].any()                       # padding never counts
    # the masked loss ignores what the prompt's and the padding's targets are
    m = pyllm.GPT(pyllm.GPTConfig(vocab_size=tok.vocab_size, block_size=200, n_layer=1,
                                  n_head=2, n_embd=16), seed=0)
    y2 = y.copy()
    y2[~mask] = (y2[~mask] + 1) % tok.vocab_size
    assert m.loss(x, y, mask=mask) == m.loss(x, y2, mask=mask)
    assert m.loss(x, y) != m.loss(x, y2)
    with pytest.raises(ValueError, match="entry 0 is .* more than block_size"):
        instruction_batch(tok, entries, block_size=20)
    with pytest.raises(ValueError, match="at least one entry"):
        instruction_batch(tok, [], block_size=20)
    with pytest.raises(ValueError, match="empty output"):
        instruction_batch(tok, [dict(ENTRY, output="")], block_size=200)


def test_a_model_learns_a_toy_instruction_set_through_the_mask():
    """Reverse three-letter words: the masked (response-only) loss falls by more than half."""
    r = np.random.default_rng(0)
    letters = "abcdefgh"
    words = ["".join(r.choice(list(letters), 3)) for _ in range(64)]
    entries = [{"instruction": "Reverse.", "input": w, "output": w[::-1]} for w in words]
    tok = pyllm.CharTokenizer.train("".join(format_instruction(e, with_output=True)
                                            for e in entries) + "#")
    x, y, mask = instruction_batch(tok, entries, block_size=192, end_id=tok.encode("#")[0])
    m = pyllm.GPT(pyllm.GPTConfig(vocab_size=tok.vocab_size, block_size=192, n_layer=2,
                                  n_head=2, n_embd=32), seed=0)
    opt = pyllm.AdamW(m, lr=3e-3, weight_decay=0.0)
    first = m.loss(x, y, mask=mask)
    for step in range(150):
        b = r.choice(len(entries), 16, replace=False)
        _, g = m.loss_and_grads(x[b], y[b], mask=mask[b])
        pyllm.clip_grad_norm(g, 1.0)
        opt.step(g)
    assert m.loss(x, y, mask=mask) < 0.5 * first


def test_cli_instruct_then_sample_the_response(tmp_path, capsys):
    import json
    from pyllm.cli import main
    r = np.random.default_rng(1)
    words = ["".join(r.choice(list("abcd"), 3)) for _ in range(24)]
    data = [{"instruction": "Reverse.", "input": w, "output": w[::-1]} for w in words]
    (tmp_path / "inst.json").write_text(json.dumps(data))
    text = "".join(format_instruction(e, with_output=True) for e in data)
    (tmp_path / "text.txt").write_text(text * 2)
    assert main(["train", "--data", str(tmp_path / "text.txt"), "--out", str(tmp_path / "base"),
                 "--steps", "2", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
                 "--block-size", "192", "--batch-size", "2", "--eval-interval", "2",
                 "--eval-iters", "1", "--sample-tokens", "0", "--quiet"]) == 0
    assert main(["finetune", "instruct", "--ckpt", str(tmp_path / "base"), "--data",
                 str(tmp_path / "inst.json"), "--epochs", "1", "--out",
                 str(tmp_path / "tuned")]) == 0
    err = capsys.readouterr().err
    assert "22 training and 2 validation entries" in err and "epoch 1: train loss" in err
    assert main(["sample", "--ckpt", str(tmp_path / "tuned"), "--instruction", "Reverse.",
                 "--input", "abc", "--max-new-tokens", "4", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert "Below is an instruction" not in out and len(out.strip("\n")) <= 4   # the response
    (tmp_path / "bad.json").write_text('[{"instruction": "x"}]')
    assert main(["finetune", "instruct", "--ckpt", str(tmp_path / "base"), "--data",
                 str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")]) == 2
    assert "entry 1: expected" in capsys.readouterr().err
