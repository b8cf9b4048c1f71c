"""Induction heads in a 2-layer pyllm GPT: the phase change, measured and ablated.

    python benchmarks/induction_heads.py            # about 8 minutes on two cores
    python benchmarks/induction_heads.py --quick    # seconds: the pipeline only (CI)
    python benchmarks/induction_heads.py --set n_head=4 --set steps=6000   # a variant

A 2-layer model (width 96, 3 heads of size 32, vocabulary 64, context 64) trains for 4,000 steps
of batch 64 (AdamW lr 3e-3, 100 warm-up steps, no weight decay) on rows drawn afresh every step
(``--set KEY=VALUE`` changes any entry of ``RECIPE``):

* ``layout=triggers`` (the recipe): a fixed random bigram chain (each token has ``succ`` = 4
  equally likely successors) into which, with probability ``trig_p`` per position, one of
  ``n_trig`` trigger tokens drawn for the row is planted, always followed by the row's own
  output token for it (after Bietti et al. 2023, "Birth of a Transformer: A Memory Viewpoint").
  The loss counts every position. The bigram is learnt from the current token alone; an output
  after a trigger's second appearance needs an induction head; the token before a trigger is the
  chain's, so no longer-prefix circuit helps.
* ``layout=twice`` / ``pairs`` / ``mixed`` (earlier recipes, kept for the record): random tokens
  in which a random segment of period P (3..16, never ``--eval-period``) is copied right after
  itself (or bigrams A B come back later as A -> B); the loss counts only the copy, through
  ``GPT.loss_and_grads(mask=)``; a fraction ``trigram_frac`` of skip-trigram rows
  (x[t] = pi(x[t-2]) with probability 0.9) grows a previous-token head early.

Every ``log_every`` steps it logs the loss, the loss on the repeated half of held-out r + r
sequences of random tokens at period S = ``--eval-period`` (a period the training rows never
have), the best previous-token (layer 0) and induction (layer 1) scores
(``pyllm.explore.scores_from_maps``) at S, and the best layer-1 attention to offset S - 2 (one
position past the induction target), all from one set of attention maps. Then it prints every
head's scores and ablation effect (zero and mean), trains a 1-layer control the same way,
writes an SVG plot (``--out``) and judges the four criteria of docs/EXPLORE.md; exit status 1
if a full run misses one.

What it shows (measured figures in docs/EXPLORE.md): a plateau of about 1,400 steps, then within
about 800 steps a previous-token head in layer 0 (score 0.99-1.00) and induction heads in layer 1
(0.4-0.7 at the unseen period) while the repeated-half loss falls from about 4.6 to 1.2 nats.
Every layer-1 head becomes an induction head; "a random other head" of criterion 3 is drawn from
the heads no score marks (all <= 0.4), and the induction heads ablated together are reported
too. Seeds 0-3 pass all four criteria.
"""
import argparse
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import pyllm  # noqa: E402
from pyllm.explore import (ablate, attention_maps, offset_attention, repeated_tokens,  # noqa: E402
                           scores_from_maps)
from pyllm.plot import write_loss_curve  # noqa: E402

RECIPE = dict(vocab=64, ctx=64, n_head=3, n_embd=96, batch=64, steps=4000, lr=3e-3,
              warmup=100, weight_decay=0.0, clip=1.0, pmin=3, pmax=16, eval_period=12,
              trigram_frac=0.5, trigram_p=0.9, trigram_map="permutation", trigram_chains=1,
              short_frac=0.0, corrupt=0.0, layout="triggers", n_pairs=4, n_trig=3,
              trig_p=0.15, succ=4, trig_mask_all=1, log_every=100, eval_seqs=64)
QUICK = dict(RECIPE, batch=16, steps=20, log_every=10, eval_seqs=8)


# ---- data ------------------------------------------------------------------------------------

def trigger_rows(rng, r, chain, B):
    """``layout=triggers``: rows of a fixed random bigram chain (each token has ``succ`` equally
    likely successors) into which, with probability ``trig_p`` per position, one of ``n_trig``
    trigger tokens drawn for the row is planted, always followed by the row's own output token for
    it. Predicting an output from its trigger's second appearance on needs an induction head; the
    token before a trigger is the chain's, so no longer prefix helps."""
    T, V = r["ctx"], r["vocab"]
    seq = np.empty((B, T + 1), dtype=np.int64)
    mask = np.zeros((B, T), dtype=bool)
    for b in range(B):
        trig = rng.choice(V, size=r["n_trig"], replace=False)
        out = rng.integers(0, V, size=r["n_trig"])
        seen = np.zeros(r["n_trig"], dtype=bool)
        seq[b, 0] = rng.integers(0, V)
        t = 1
        while t <= T:
            if rng.random() < r["trig_p"] and t < T:
                k = int(rng.integers(r["n_trig"]))
                seq[b, t], seq[b, t + 1] = trig[k], out[k]
                if seen[k]:
                    mask[b, t] = True
                seen[k] = True
                t += 2
            else:
                seq[b, t] = chain[seq[b, t - 1], rng.integers(r["succ"])]
                t += 1
        if r["trig_mask_all"]:
            mask[b] = True
    return seq[:, :-1], seq[:, 1:], mask


def make_batch(rng, r, tables, B):
    """B rows of ``r["ctx"] + 1`` tokens: inputs x (B, T), targets y (B, T) and the loss mask
    (B, T). A fraction ``trigram_frac`` are skip-trigram rows (every position counts); the rest
    are repeat rows: only the predictions of the copy's tokens 2..P count (its first token
    cannot be foreseen)."""
    T, V = r["ctx"], r["vocab"]
    if r["layout"] == "triggers":
        return trigger_rows(rng, r, tables["chain"], B)
    perm = tables["pi"]
    seq = rng.integers(0, V, size=(B, T + 1))
    mask = np.zeros((B, T), dtype=bool)
    periods = [p for p in range(r["pmin"], r["pmax"] + 1) if p != r["eval_period"]]
    dists = [d for d in range(2, T) if d != r["eval_period"]]
    for b in range(B):
        if rng.random() < r["trigram_frac"]:
            hit = rng.random(T + 1) < r["trigram_p"]
            hit[:2] = False
            for t in range(2, T + 1):
                if hit[t] and (r["trigram_chains"] or not hit[t - 2]):
                    seq[b, t] = perm[seq[b, t - 2]]
                else:
                    hit[t] = False
            mask[b] = True
        elif r["layout"] == "pairs" or (r["layout"] == "mixed" and rng.random() < 0.5):
            # n_pairs bigrams A B, each seen again later as A -> B at a distance d that is not
            # the eval period; only those second B's count
            used = np.zeros(T + 1, dtype=bool)
            for _ in range(r["n_pairs"]):
                for _try in range(20):
                    d = int(rng.choice(dists))
                    i = int(rng.integers(0, T - d))
                    j = i + d
                    if not used[[i, i + 1, j, j + 1]].any():
                        break
                else:
                    continue
                used[[i, i + 1, j, j + 1]] = True
                seq[b, j] = seq[b, i]
                seq[b, j + 1] = seq[b, i + 1]
                mask[b, j] = True
        else:
            P = int(rng.choice(periods if rng.random() >= r["short_frac"] else periods[:2]))
            o = int(rng.integers(0, T + 2 - 2 * P))
            seq[b, o + P:o + 2 * P] = seq[b, o:o + P]
            mask[b, o + P:o + 2 * P - 1] = True   # inputs whose next token is predictable
            if r["corrupt"]:
                # copy tokens replaced at random: matching one token (induction) then succeeds
                # more often than matching two (the prefix circuit through a 3-back head)
                bad = np.flatnonzero(rng.random(P) < r["corrupt"]) + o + P
                seq[b, bad] = rng.integers(0, V, size=len(bad))
    return seq[:, :-1], seq[:, 1:], mask


def trigram_map(r, seed):
    """The fixed tables of a run: ``pi`` of the skip-trigram rows (the identity, or a random
    permutation of the vocabulary) and ``chain``, the successors (V, succ) of the trigger rows'
    bigram chain."""
    V = r["vocab"]
    pi = np.arange(V) if r["trigram_map"] == "identity" \
        else np.random.default_rng([seed, 3]).permutation(V)
    return dict(pi=pi, chain=np.random.default_rng([seed, 5]).integers(0, V, size=(V, r["succ"])))


def repeated_half(model, S, n, seed):
    """n held-out sequences r + r of period S (``explore.repeated_tokens``, as the head scores
    use) and the mask of the repeated half: the predictions of tokens 2..S of the second copy
    (the first one is not predictable)."""
    x = repeated_tokens(model, S, n, seed)
    mask = np.zeros((n, 2 * S - 1), dtype=bool)
    mask[:, S:] = True
    return x[:, :-1], x[:, 1:], mask


def probe(model, S, n, seed):
    """One set of maps on n sequences r + r of period S: the head scores and the mean attention
    one position past the induction target (offset S - 2) and at S - 1, S, per head."""
    maps = attention_maps(model, repeated_tokens(model, S, n, seed))
    offsets = {k: offset_attention(maps, k, S).mean(axis=0) for k in (S - 1, S - 2, S)}
    return scores_from_maps(maps, S), offsets


# ---- training ----------------------------------------------------------------------------------

def train(r, n_layer, seed, log, tag):
    """Train one model on the recipe; returns (model, history of logged points)."""
    cfg = pyllm.GPTConfig(vocab_size=r["vocab"], block_size=r["ctx"], n_layer=n_layer,
                          n_head=r["n_head"], n_embd=r["n_embd"])
    model = pyllm.GPT(cfg, seed=seed)
    opt = pyllm.AdamW(model, lr=r["lr"], betas=(0.9, 0.98), weight_decay=r["weight_decay"])
    tables = trigram_map(r, seed)
    data = np.random.default_rng([seed, 1])
    S = r["eval_period"]
    hx, hy, hm = repeated_half(model, S, r["eval_seqs"], seed + 2)
    hist, run, n, t0 = [], 0.0, 0, time.time()
    for step in range(r["steps"] + 1):
        if step % r["log_every"] == 0 or step == r["steps"]:
            sc, offs = probe(model, S, 8, seed + 1000)
            h = dict(step=step, train=run / n if n else float("nan"),
                     rep=model.loss(hx, hy, mask=hm), prev=float(sc["previous_token"][0].max()),
                     ind=float(sc["induction"][-1].max()), late=float(offs[S - 2][-1].max()),
                     time=time.time() - t0)
            hist.append(h)
            run, n = 0.0, 0
            log("%s step %5d  train %.3f  repeated half %.3f  prev-token %.2f  induction %.2f  "
                "one later %.2f  %4.0f s" % (tag, step, h["train"], h["rep"], h["prev"], h["ind"],
                                             h["late"], h["time"]))
        if step == r["steps"]:
            break
        opt.lr = r["lr"] * min(1.0, (step + 1) / r["warmup"])
        x, y, mask = make_batch(data, r, tables, r["batch"])
        loss, grads = model.loss_and_grads(x, y, mask=mask)
        if not math.isfinite(loss):
            raise RuntimeError("loss is %r at step %d" % (loss, step))
        pyllm.clip_grad_norm(grads, r["clip"])
        opt.step(grads)
        run, n = run + loss, n + 1
    return model, hist


def phase_change(hist, lo=0.1, hi=0.4):
    """(last logged step with induction < lo before the first > hi, that first step), or None."""
    up = next((h["step"] for h in hist if h["ind"] > hi), None)
    if up is None:
        return None
    below = [h["step"] for h in hist if h["step"] < up and h["ind"] < lo]
    return (below[-1] if below else None), up


def ablation_table(model, r, seed):
    """Rise of the repeated-half loss (nats) when each head is ablated: {mode: (L, NH) array}."""
    x, y, mask = repeated_half(model, r["eval_period"], r["eval_seqs"], seed + 2)
    ref, _, _ = make_batch(np.random.default_rng([seed, 4]), r, trigram_map(r, seed), 64)
    base = model.loss(x, y, mask=mask)
    L, NH = model.config.n_layer, model.config.n_head
    out = {}
    for mode in ("zero", "mean"):
        d = np.zeros((L, NH))
        for layer in range(L):
            for head in range(NH):
                with ablate(model, [(layer, head)], mode=mode,
                            reference=ref if mode == "mean" else None):
                    d[layer, head] = model.loss(x, y, mask=mask) - base
        out[mode] = d
    return base, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a run of seconds that checks the "
                    "pipeline (CI); the criteria are judged on full runs only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default %d)"
                    % RECIPE["steps"])
    ap.add_argument("--eval-period", type=int, default=None,
                    help="the period left out of training and scored (default %d)"
                    % RECIPE["eval_period"])
    ap.add_argument("--out", default=None, help="write the SVG plot here")
    ap.add_argument("--save", default=None, help="save the trained 2-layer model here")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-control", action="store_true", help="skip the 1-layer control")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one recipe entry (repeatable), e.g. --set n_head=2")
    args = ap.parse_args(argv)
    r = dict(QUICK if args.quick else RECIPE)
    for kv in args.set:
        k, _, v = kv.partition("=")
        if k not in r or not v:
            ap.error("--set %r: expected KEY=VALUE with KEY one of %s" % (kv, ", ".join(r)))
        try:
            r[k] = type(RECIPE[k])(v)
        except ValueError:
            ap.error("--set %s: %r is not a %s" % (k, v, type(RECIPE[k]).__name__))
    if args.steps is not None:
        r["steps"] = args.steps
    if args.eval_period is not None:
        r["eval_period"] = args.eval_period
    if not (r["pmin"] < r["eval_period"] < r["pmax"] and 2 * r["eval_period"] <= r["ctx"]):
        ap.error("--eval-period must lie strictly inside the training periods %d..%d and fit "
                 "twice in the context %d" % (r["pmin"], r["pmax"], r["ctx"]))
    if args.threads:
        pyllm.set_num_threads(args.threads)

    def log(s):
        print(s, flush=True)

    log("recipe: " + " ".join("%s=%s" % kv for kv in r.items()))
    model, hist = train(r, 2, args.seed, log, "2-layer")
    if args.save:
        model.save(args.save)
    S = r["eval_period"]
    sc, offs = probe(model, S, 16, args.seed + 1000)
    ind_head = (1, int(np.argmax(sc["induction"][1])))
    prev_head = (0, int(np.argmax(sc["previous_token"][0])))
    log("\nscores at the unseen period %d (rows: layers, columns: heads)" % S)
    for k in ("previous_token", "induction", "duplicate"):
        log("%-15s %s" % (k, np.array2string(sc[k], precision=2).replace("\n", "")))
    log("\nlayer-1 attention from the second copy, by how far back it looks:")
    log("head   %s" % "  ".join("%6d" % k for k in offs))
    for head in range(r["n_head"]):
        log("1.%d   %s" % (head, "  ".join("%6.2f" % offs[k][1, head] for k in offs)))
    base, table = ablation_table(model, r, args.seed)
    # the heads outside the circuit: no score of theirs marks a pattern (all <= 0.4, the
    # threshold of criterion 1); other induction heads (layer 1 grows several) are the circuit
    others = [(layer, head) for layer in range(2) for head in range(r["n_head"])
              if (layer, head) not in (ind_head, prev_head)
              and max(sc[k][layer, head] for k in sc) <= 0.4]
    # with no such head there is nothing to compare with (criterion 3 fails)
    other = others[int(np.random.default_rng(args.seed + 7).integers(len(others)))] \
        if others else None
    log("\nrepeated-half loss %.3f; its rise when one head is ablated (nats):" % base)
    log("head   zero    mean    role")
    for layer in range(2):
        for head in range(r["n_head"]):
            role = {ind_head: "induction", prev_head: "previous-token", other: "random other"} \
                .get((layer, head), "")
            log("%d.%d  %6.2f  %6.2f    %s" % (layer, head, table["zero"][layer, head],
                                             table["mean"][layer, head], role))
    circuit = [(1, h) for h in range(r["n_head"]) if sc["induction"][1, h] > 0.4]
    if len(circuit) > 1:
        x, y, mask = repeated_half(model, S, r["eval_seqs"], args.seed + 2)
        with ablate(model, circuit):
            log("all %d induction heads (%s) zeroed together: +%.2f nats"
                % (len(circuit), ", ".join("%d.%d" % c for c in circuit),
                   model.loss(x, y, mask=mask) - base))
    ctrl = None
    if not args.no_control:
        log("")
        ctrl_model, ctrl = train(r, 1, args.seed, log, "1-layer")
        ctrl_ind = float(probe(ctrl_model, S, 16, args.seed + 1000)[0]["induction"].max())
    if args.out:
        series = {"train loss (nats)": [(h["step"], h["train"]) for h in hist],
                  "repeated-half loss": [(h["step"], h["rep"]) for h in hist],
                  "induction score (best layer-1 head)": [(h["step"], h["ind"]) for h in hist],
                  "previous-token score (best layer-0 head)": [(h["step"], h["prev"])
                                                               for h in hist]}
        series["attention one past the induction target (best layer-1 head)"] = \
            [(h["step"], h["late"]) for h in hist]
        if ctrl:
            series["1-layer control: induction score"] = [(h["step"], h["ind"]) for h in ctrl]
        write_loss_curve(args.out, series, title="2-layer GPT on repeats: loss and head scores at "
                         "the unseen period %d" % S, ylabel="loss (nats) / score")
        log("\nplot written to %s" % args.out)

    pc = phase_change(hist)
    zi, mi = (table[m][ind_head] for m in ("zero", "mean"))
    zp, mp = (table[m][prev_head] for m in ("zero", "mean"))
    zo, mo = (table[m][other] for m in ("zero", "mean")) if other else (np.nan, np.nan)
    crit = [
        ("1. layer-0 previous-token score > 0.4 and layer-1 induction score > 0.4 at period %d"
         % S, sc["previous_token"][0].max() > 0.4 and sc["induction"][1].max() > 0.4,
         "%.2f (head %d.%d), %.2f (head %d.%d)" % (sc["previous_token"][prev_head], *prev_head,
                                                   sc["induction"][ind_head], *ind_head)),
        ("2. best induction score rises from < 0.1 to > 0.4 within 30%% of the %d steps"
         % r["steps"], pc is not None and pc[0] is not None
         and pc[1] - pc[0] <= 0.3 * r["steps"],
         "step %s -> step %s" % pc if pc else "never above 0.4"),
        ("3. ablation (zero, mean): induction head > 1 nat, its previous-token partner "
         "> 0.5, a random other head (%s) < 0.2" % ("%d.%d" % other if other else "none"),
         min(zi, mi) > 1 and min(zp, mp) > 0.5 and max(zo, mo) < 0.2,
         "%.2f/%.2f, %.2f/%.2f, %.2f/%.2f" % (zi, mi, zp, mp, zo, mo)),
    ]
    if ctrl is not None:
        crit.append(("4. 1-layer control: no head with induction score > 0.2",
                     ctrl_ind <= 0.2, "best %.2f" % ctrl_ind))
    log("\ncriteria%s:" % (" (not judged: --quick)" if args.quick else ""))
    for name, ok, val in crit:
        log("  %s  %s: %s" % ("    " if args.quick else ("PASS" if ok else "FAIL"), name, val))
    if args.quick:
        return 0
    return 0 if all(ok for _, ok, _ in crit) else 1


if __name__ == "__main__":
    sys.exit(main())
