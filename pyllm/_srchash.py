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
