"""Every random stream of a run is seeded from the run's seed and what the stream is for."""

import hashlib


def derive_seed(seed: int, *purpose: int | str) -> int:
    """A 63-bit seed for (seed, *purpose), e.g. (seed, "dropout", tower) or (seed, "augment", step).

    A hash rather than arithmetic on the parts: distinct purposes can never collide (as
    `seed * 1000 + step` would once a run passes 1000 steps), and every layout, resumed run
    and loading process derives the same seed from the same words.
    """
    words = repr((seed, *purpose)).encode()
    return int.from_bytes(hashlib.blake2b(words, digest_size=8).digest(), "little") >> 1
