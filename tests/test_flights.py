"""Single-flight locks at shutdown: a flight that ends after its locks were closed gives nothing
back twice and raises nothing (a spool's delayed end, a request's finally)."""
from __future__ import annotations

from pathlib import Path

from proxy.cache.flights import KeyLocks


def test_a_release_after_close_is_a_no_op(tmp_path: Path) -> None:
    locks = KeyLocks(str(tmp_path / "flights"))
    slot = locks.slot("/a.mp4")
    assert locks.acquire(slot) and locks.acquire(slot)
    locks.close()  # the worker stops: every slot given back
    locks.release(slot)
    locks.release(slot)
    other = KeyLocks(str(tmp_path / "flights"))
    try:
        assert not other.held_elsewhere(slot) and other.acquire(slot)
    finally:
        other.close()
