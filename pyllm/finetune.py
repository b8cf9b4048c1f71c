"""Instruction data for finetuning (Raschka's book, chapter 7): Alpaca-style prompts and padded
batches whose loss counts the response tokens only.

The prompt of an entry ``{"instruction", "input", "output"}`` is

    Below is an instruction that describes a task. Write a response that appropriately
    completes the request.\\n\\n### Instruction:\\n<instruction>[\\n\\n### Input:\\n<input>]
    \\n\\n### Response:\\n

(the Input part only when the input is non-empty), followed by the output when training. A batch
puts each entry's prompt + output (+ an end token) in one row, pads the rows to one length, and
marks in ``mask`` the positions whose target is a response token: ``GPT.loss_and_grads(x, y,
mask=mask)`` (or a LoRA's) then learns the responses only, never the prompt or the padding.
"""
import numpy as np

from .tokenizer import EOT_TOKEN, BPETokenizer

PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.")


def _field(entry, key, required):
    if not isinstance(entry, dict):
        raise TypeError("an instruction entry must be a dict with 'instruction', 'input' and "
                        "'output', got %s" % type(entry).__name__)
    v = entry.get(key, None if required else "")
    if v is None:
        raise ValueError("the instruction entry lacks %r" % key)
    if not isinstance(v, str):
        raise TypeError("entry[%r] must be a str, got %s" % (key, type(v).__name__))
    return v


def format_instruction(entry, with_output=False):
    """The Alpaca-style prompt of ``entry`` (see the module docstring), ending with
    "### Response:\\n"; ``with_output=True`` appends ``entry["output"]`` (training text)."""
    text = PREAMBLE + "\n\n### Instruction:\n" + _field(entry, "instruction", True)
    inp = _field(entry, "input", False)
    if inp:
        text += "\n\n### Input:\n" + inp
    text += "\n\n### Response:\n"
    if with_output:
        text += _field(entry, "output", True)
    return text


def instruction_batch(tokenizer, entries, block_size, pad_id=0, end_id=None):
    """Padded training rows for ``entries``: ``(x, y, mask)``, int32 x and y of shape (B, T) and
    a bool mask, T the longest row (at most ``block_size``).

    Row b holds the tokens of the prompt, the output and ``end_id`` (when given, so the model
    learns to stop; it counts in the loss); x is the row without its last token, y without its
    first. ``mask[b, t]`` is True where y[b, t] is an output token or the end token: the prompt
    and the padding (``pad_id``) never count. An entry longer than block_size + 1 tokens is an
    error naming it (truncating would cut off the response the loss is about)."""
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
            or block_size < 1:
        raise ValueError("block_size must be an int >= 1, got %r" % (block_size,))
    entries = list(entries)
    if not entries:
        raise ValueError("instruction_batch needs at least one entry")
    rows = []
    for i, e in enumerate(entries):
        prompt = tokenizer.encode(format_instruction(e))
        out = tokenizer.encode(_field(e, "output", True)) + ([end_id] if end_id is not None
                                                             else [])
        if not out:
            raise ValueError("entry %d has an empty output: nothing to learn" % i)
        if len(prompt) + len(out) > block_size + 1:
            raise ValueError("entry %d is %d tokens, more than block_size + 1 = %d; shorten it "
                             "or use a model with a longer context"
                             % (i, len(prompt) + len(out), block_size + 1))
        rows.append((prompt, out))
    T = max(len(p) + len(o) for p, o in rows) - 1
    x = np.full((len(rows), T), pad_id, dtype=np.int32)
    y = np.full((len(rows), T), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), T), dtype=bool)
    for b, (p, o) in enumerate(rows):
        seq = np.array(p + o, dtype=np.int32)
        n = len(seq) - 1
        x[b, :n], y[b, :n] = seq[:-1], seq[1:]
        mask[b, len(p) - 1:n] = True        # targets seq[len(p):]: the output (and end token)
    return x, y, mask


def end_token(tokenizer):
    """The id of ``<|endoftext|>`` when the tokenizer has it as one token, else None."""
    if isinstance(tokenizer, BPETokenizer):
        ids = tokenizer.encode(EOT_TOKEN)
        if len(ids) == 1:
            return ids[0]
    return None
