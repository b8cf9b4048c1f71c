"""The classifier head: padding never changes a sequence's result, gradients match finite
differences (float64) in every finetuning mode, each mode trains exactly what it says (the LoRA
base bit-identical, last_block only the last block), and a rule over tokens is learned to >= 95%
validation accuracy with LoRA."""
import numpy as np
import pytest

import pyllm

from _close import assert_close
from test_kernels import assert_fd_close
from test_model import randomize

CFG = dict(vocab_size=20, block_size=24, n_layer=2, n_head=2, n_embd=32)


def rule_data(rng, n):
    """Sequences of 5-19 tokens from 4..19; label 1 when token 3 occurs (placed at random)."""
    seqs = [list(rng.integers(4, 20, rng.integers(5, 20))) for _ in range(n)]
    labels = np.arange(n) % 2
    for s, y in zip(seqs, labels):
        if y:
            s[rng.integers(len(s))] = 3
    return seqs, labels


def test_padding_and_batch_companions_change_nothing(backend):
    m = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0)
    clf = pyllm.Classifier(m, 3, finetune="all", seed=1)
    seqs = [[5, 6, 7], list(range(4, 20)), [9]]
    together = clf.logits(seqs)
    for i, s in enumerate(seqs):        # measured: 3.6e-7 relative, 1.5 ulps of the row max
        assert_close(clf.logits([s])[0], together[i], rtol=4e-6, floor_ulps=16, what=str(s))
    np.testing.assert_allclose(clf.predict_proba(seqs).sum(-1), 1, atol=1e-12)


@pytest.mark.parametrize("mode", ["lora", "last_block", "all"])
def test_gradients_match_finite_differences(mode):
    pyllm.set_backend("numpy")
    try:
        m = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0, dtype=np.float64)
        randomize(m, seed=2, scale=0.2)
        clf = pyllm.Classifier(m, 3, finetune=mode, rank=2, alpha=4, seed=3)
        rng = np.random.default_rng(4)
        if clf.lora is not None:
            clf.lora.params[...] = rng.standard_normal(clf.lora.params.shape) * 0.2
        clf.head_weight[...] = rng.standard_normal(clf.head_weight.shape) * 0.3
        seqs = [[5, 6, 7, 8], [9, 3, 4], list(range(4, 14))]
        labels = np.array([0, 2, 1])
        clf.loss_and_grads(seqs, labels)
        groups = clf.param_groups()
        checked = 0
        for p, g, _ in groups:
            # relative 1e-5, floor 32 eps64 |loss| / step (measured at most 3.3 of it)
            picks = rng.choice(p.size, min(6, p.size), replace=False)
            assert_fd_close(p.reshape(-1), g.reshape(-1).copy(), picks,
                            lambda: clf.loss(seqs, labels), floor_ulps=32, what=mode)
            checked += len(picks)
        assert checked >= 12
    finally:
        pyllm.set_backend("auto")


@pytest.mark.parametrize("mode", ["lora", "last_block"])
def test_each_mode_trains_what_it_says(mode):
    m = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    clf = pyllm.Classifier(m, 2, finetune=mode)
    opt = pyllm.AdamW(clf, lr=1e-2)
    seqs, labels = rule_data(np.random.default_rng(1), 32)
    for _ in range(3):
        _, g = clf.loss_and_grads(seqs, labels)
        opt.step(g)
    last = "h.%d." % (CFG["n_layer"] - 1)
    for k, v in m.state_dict().items():
        moved = not np.array_equal(v, before[k])
        trains = mode == "last_block" and (k.startswith(last) or k.startswith("ln_f."))
        assert moved == trains or (trains and k.endswith("bias") and not moved), k
    C = CFG["n_embd"]
    head = C * 2 + 2
    if mode == "lora":
        assert clf.n_trainable == head + CFG["n_layer"] * 8 * 16 * C      # rank * 16C a block
    else:
        block = 12 * C * C + 13 * C
        assert clf.n_trainable == head + block + 2 * C


def test_lora_classifier_learns_a_rule_over_tokens():
    rng = np.random.default_rng(0)
    train, ytrain = rule_data(rng, 256)
    val, yval = rule_data(rng, 128)
    m = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0)
    frozen = m.params.copy()
    clf = pyllm.Classifier(m, 2, finetune="lora")
    opt = pyllm.AdamW(clf, lr=1e-2, weight_decay=0.0)
    for _ in range(150):
        b = rng.choice(256, 32, replace=False)
        _, g = clf.loss_and_grads([train[i] for i in b], ytrain[b])
        pyllm.clip_grad_norm(g, 1.0)
        opt.step(g)
    assert (clf.predict(val) == yval).mean() >= 0.95
    assert np.array_equal(m.params, frozen)


def test_bad_input_is_refused_by_name():
    m = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0)
    with pytest.raises(ValueError, match="n_classes must be"):
        pyllm.Classifier(m, 1)
    with pytest.raises(ValueError, match="finetune must be one of"):
        pyllm.Classifier(m, 2, finetune="head")
    with pytest.raises(ValueError, match="rank must be"):
        pyllm.Classifier(m, 2, rank=0)
    clf = pyllm.Classifier(m, 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        clf.loss_and_grads([[4, 5]], [2])
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        clf.predict([[4], []])
    with pytest.raises(ValueError, match="token id"):
        clf.predict([[4, 99]])
    with pytest.warns(RuntimeWarning, match="its last 24 are used"):
        assert clf.predict([list(range(4, 20)) * 2]).shape == (1,)


def test_save_and_load_give_the_same_classifier(tmp_path):
    m = pyllm.GPT(pyllm.GPTConfig(**CFG), seed=0)
    for mode in ("lora", "last_block"):
        clf = pyllm.Classifier(m, 3, finetune=mode, rank=2)
        clf.head_weight += 0.1
        if clf.lora is not None:
            clf.lora.params += 0.01
        clf.save(tmp_path / mode, labels=["x", "y", "z"])
        back = pyllm.Classifier.load(tmp_path / mode)
        assert back.labels == ["x", "y", "z"] and back.finetune == mode
        assert np.array_equal(back.logits([[4, 5, 6], [7]]), clf.logits([[4, 5, 6], [7]]))
    with pytest.raises(pyllm.CheckpointError, match="not a saved classifier"):
        pyllm.Classifier.load(tmp_path / "nothing")
    with pytest.raises(ValueError, match="labels must name the 3 classes"):
        clf.save(tmp_path / "bad", labels=["x"])


def test_labelled_files_and_their_errors_by_line(tmp_path):
    from pyllm.classify import read_labelled_texts
    (tmp_path / "a.csv").write_text('label,text\nham,"hello, there"\nspam,win now\n\n',
                                    encoding="utf-8")
    assert read_labelled_texts(tmp_path / "a.csv") == (["hello, there", "win now"],
                                                       ["ham", "spam"])
    (tmp_path / "a.jsonl").write_text('{"text": "x", "label": 1}\n\n{"text": "y", "label": 0}\n')
    assert read_labelled_texts(tmp_path / "a.jsonl") == (["x", "y"], [1, 0])
    cases = [("b.csv", "text,kind\nx,1\n", "line 1: the header has no 'label'"),
             ("c.csv", "text,label\nx,1\ny\n", "line 3: 1 fields, the header has 2"),
             ("d.csv", "", "is empty"),
             ("e.csv", "text,label\n", "holds no examples"),
             ("f.jsonl", '{"text": "x", "label": 1}\n{"text": "y"\n', "line 2: not JSON"),
             ("g.jsonl", '{"text": "x"}\n', "line 1: expected an object with 'text' and 'label'"),
             ("h.jsonl", '{"text": 3, "label": 1}\n', "line 1: 'text' must be a string")]
    for name, text, msg in cases:
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=msg):
            read_labelled_texts(tmp_path / name)


def test_cli_finetunes_a_classifier_and_classifies(tmp_path, capsys):
    import csv
    import json
    from pyllm.cli import main
    from test_train import corpus
    rng = np.random.default_rng(0)
    kinds = {"animal": ["cat", "dog", "cow", "pig"], "colour": ["red", "blue", "tan", "grey"]}

    def rows(n):
        return [(" ".join(rng.choice(kinds[k], 4)), k) for k in list(kinds) * (n // 2)]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("text", "label")] + rows(64))
    with open(tmp_path / "val.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t, "label": k}) + "\n" for t, k in rows(32))
    base = tmp_path / "base"
    text = open(corpus(tmp_path)).read() + " cat dog cow pig red blue tan grey"
    (tmp_path / "text.txt").write_text(text)
    assert main(["train", "--data", str(tmp_path / "text.txt"), "--out", str(base), "--steps",
                 "2", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
                 "--batch-size", "2", "--eval-interval", "2", "--eval-iters", "1",
                 "--sample-tokens", "0", "--quiet"]) == 0
    assert main(["finetune", "classify", "--ckpt", str(base), "--train",
                 str(tmp_path / "train.csv"), "--val", str(tmp_path / "val.jsonl"), "--test",
                 str(tmp_path / "val.jsonl"), "--epochs", "4", "--lr", "1e-2", "--out",
                 str(tmp_path / "clf")]) == 0
    err = capsys.readouterr().err
    acc = float(err.split("test accuracy ")[1].split("%")[0])
    assert "classes: animal, colour" in err and acc >= 95, err
    assert main(["classify", "--ckpt", str(tmp_path / "clf"), "pig cow cat dog"]) == 0
    label, prob = capsys.readouterr().out.split()
    assert label == "animal" and float(prob) > 0.5
    with open(tmp_path / "one.csv", "w") as f:
        f.write("text,label\ncat dog,animal\ncow,animal\n")
    assert main(["finetune", "classify", "--ckpt", str(base), "--train", str(tmp_path / "one.csv"),
                 "--val", str(tmp_path / "one.csv"), "--out", str(tmp_path / "x")]) == 2
    assert "one class only" in capsys.readouterr().err
