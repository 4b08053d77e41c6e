"""The bounded memory that caches per-image work, and the digest it is keyed by."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.io import LRU, array_digest


def test_the_least_recently_used_is_forgotten_and_none_is_remembered() -> None:
    made: list[str] = []
    lru = LRU(2)
    make = lambda k: (lambda: made.append(k) or (None if k == "none" else k.upper()))  # noqa: E731
    assert lru.get_or("a", make("a")) == "A" and lru.get_or("none", make("none")) is None
    assert lru.get_or("none", make("none")) is None and made == ["a", "none"]   # an unreadable image stays unread
    assert lru.get("a") == "A"                       # a is now the most recent ...
    lru.put("b", "B")                                # ... so "none" goes
    assert lru.get("none", "gone") == "gone" and lru.get("a") == "A" and lru.get("b") == "B"
    assert (lru.hits, lru.misses) == (4, 3)
    assert LRU(0).get_or("x", make("x")) == "X" and made[-1] == "x"   # size 0 remembers nothing
    with pytest.raises(ValueError, match="size must be >= 0"):
        LRU(-1)


def test_the_digest_tells_pixels_shape_and_dtype_apart() -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert array_digest(a) == array_digest(a.copy()) == array_digest(np.asfortranarray(a))
    b = a.copy()
    b[1, 3, 2] += 1
    assert array_digest(b) != array_digest(a)
    assert array_digest(a.reshape(4, 2, 3)) != array_digest(a)          # same bytes, other shape
    assert array_digest(a.view(np.int8)) != array_digest(a)             # same bytes, other dtype
    assert array_digest(a[:, ::-1]) == array_digest(np.ascontiguousarray(a[:, ::-1]))   # views are read as laid out
