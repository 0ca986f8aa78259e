import gc

import pytest

from proxy import gc_policy


@pytest.fixture
def restore_gc():
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settle_after_startup_freezes_what_exists_and_raises_the_first_threshold(restore_gc):
    built_at_startup = [{"n": n} for n in range(1000)]  # containers: the collector tracks them
    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    gc_policy.settle_after_startup()

    assert gc.get_freeze_count() >= len(built_at_startup)
    assert gc.get_threshold() == (gc_policy.GEN0_THRESHOLD, gc_policy.GEN1_THRESHOLD, gc_policy.GEN2_THRESHOLD)
    assert gc.get_threshold()[0] > 700  # CPython's default, which the module exists to change


def test_cyclic_garbage_made_after_startup_is_still_collected(restore_gc):
    gc_policy.settle_after_startup()

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2
