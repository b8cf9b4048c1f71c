"""One small seeded random generator (PCG32) used for batching and sampling on every backend.

Pure Python integer arithmetic, so the same seed gives the same stream on every platform, NumPy
version and backend, and its whole state is two integers that a checkpoint stores as text.
Reference: M. E. O'Neill, "PCG: A Family of Simple Fast Space-Efficient Statistically Good
Algorithms for Random Number Generation" (2014), the pcg32 (XSH-RR 64/32) variant.
"""

_MASK64 = (1 << 64) - 1
_MULT = 6364136223846793005


class RNG:
    """PCG32: 64-bit state, 32-bit outputs.

    >>> r = RNG(42); a = r.randbelow(10); r2 = RNG(42); a == r2.randbelow(10)
    True
    """

    def __init__(self, seed=0, stream=54):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError("seed must be an int, got %s" % type(seed).__name__)
        self.inc = ((int(stream) << 1) | 1) & _MASK64
        self.state = 0
        self.next_u32()
        self.state = (self.state + (seed & _MASK64)) & _MASK64
        self.next_u32()

    def next_u32(self):
        """The next 32-bit unsigned integer."""
        old = self.state
        self.state = (old * _MULT + self.inc) & _MASK64
        xorshifted = (((old >> 18) ^ old) >> 27) & 0xFFFFFFFF
        rot = old >> 59
        return ((xorshifted >> rot) | (xorshifted << ((-rot) & 31))) & 0xFFFFFFFF

    def random(self):
        """A float in [0, 1) with 53 random bits."""
        hi, lo = self.next_u32() >> 5, self.next_u32() >> 6
        return (hi * 67108864.0 + lo) / 9007199254740992.0

    def randbelow(self, n):
        """An int uniform in [0, n), without modulo bias (n >= 1, n < 2**32)."""
        if not 1 <= n <= 0xFFFFFFFF:
            raise ValueError("randbelow needs 1 <= n < 2**32, got %r" % (n,))
        threshold = (0x100000000 - n) % n
        while True:
            r = self.next_u32()
            if r >= threshold:
                return r % n

    def get_state(self):
        """The generator's state as a JSON-friendly dict."""
        return {"state": self.state, "inc": self.inc}

    def set_state(self, st):
        """Restore a state returned by :meth:`get_state` (checked)."""
        try:
            state, inc = int(st["state"]), int(st["inc"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError("invalid RNG state %r: %s" % (st, exc)) from None
        if not (0 <= state <= _MASK64 and 0 <= inc <= _MASK64 and inc & 1):
            raise ValueError("invalid RNG state %r" % (st,))
        self.state, self.inc = state, inc
