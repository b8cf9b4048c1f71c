"""The fingerprint of the C sources an extension is built from (imports nothing from pyllm).

``source_hash(csrc_dir)`` is the SHA-256, in hex, of every ``*.c`` and ``*.h`` file directly in
``csrc_dir``, taken in sorted name order, each contributing ``name``, a NUL byte, its size in
decimal, a NUL byte, then its bytes. The build (``pyllm/_build.py``) bakes this value into the
extension; ``pyllm info`` prints it and, in a source checkout, whether the tree's sources still
match, which catches an editable install whose extension is older than its C sources.
"""
import hashlib
import os


def source_hash(csrc_dir):
    """The hex SHA-256 fingerprint of the C sources in ``csrc_dir`` (see the module docstring)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(csrc_dir)):
        if not name.endswith((".c", ".h")):
            continue
        with open(os.path.join(csrc_dir, name), "rb") as f:
            data = f.read()
        h.update(name.encode("utf-8") + b"\0" + str(len(data)).encode("ascii") + b"\0" + data)
    return h.hexdigest()


def describe_sources(built, csrc=None):
    """The extension's source fingerprint and, in a source checkout (or for ``csrc``), whether
    those C sources still match it (a mismatch means an editable install whose extension is
    older than its C sources)."""
    if csrc is None:
        csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    if not os.path.isfile(os.path.join(csrc, "pyllm.h")):
        return "sha256 %s" % built[:16]
    tree = source_hash(csrc)
    if tree == built:
        return "sha256 %s (matches %s)" % (built[:16], csrc)
    return ("sha256 %s, but %s is now %s: the extension is stale; rebuild it with "
            "`pip install -e .`" % (built[:16], csrc, tree[:16]))
