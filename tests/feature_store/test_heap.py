"""`long_lived_heap`: rare collections while held, Python's settings back once the last holder exits."""

from __future__ import annotations

import gc

import pytest

from feature_store.heap import FULL_COLLECTION_EVERY, YOUNG_COLLECTION_AFTER, long_lived_heap


def test_settings_hold_until_the_last_holder_exits() -> None:
    before = gc.get_threshold()
    first, second = long_lived_heap(), long_lived_heap()
    first.__enter__()
    assert gc.get_threshold() == (YOUNG_COLLECTION_AFTER, before[1], FULL_COLLECTION_EVERY)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    second.__enter__()
    first.__exit__(None, None, None)  # an app stops while a worker in the same process runs on
    assert gc.get_threshold() == (YOUNG_COLLECTION_AFTER, before[1], FULL_COLLECTION_EVERY)
    assert gc.get_freeze_count() >= frozen
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_settings_come_back_when_the_holder_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), long_lived_heap():
        raise RuntimeError("the app failed while serving")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
