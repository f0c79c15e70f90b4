"""freeze_long_lived: live objects leave the collector's reach, garbage cycles are still collected first, the
collector's thresholds are the job's until release_long_lived restores them."""

import gc
import weakref

from navsim_agents.long_lived import JOB_GC_THRESHOLDS, freeze_long_lived, release_long_lived


class _Node:
    def __init__(self):
        self.other = self  # a reference cycle: only the cyclic collector frees it


def test_freeze_collects_cycles_then_freezes_the_living():
    kept = [_Node() for _ in range(3)]
    garbage = _Node()
    dead = weakref.ref(garbage)
    del garbage
    before, thresholds = gc.get_freeze_count(), gc.get_threshold()
    try:
        freeze_long_lived()
        assert gc.get_threshold() == thresholds  # spaced collections are asked for
        freeze_long_lived(space_collections=True)
        freeze_long_lived(space_collections=True)  # a second freeze keeps the thresholds to restore
        assert gc.get_threshold() == JOB_GC_THRESHOLDS
        assert dead() is None  # collected before the freeze, not kept forever
        assert gc.get_freeze_count() >= before + len(kept)
        assert not any(gc.is_tracked(k) and k in gc.get_objects(generation=2) for k in kept)
    finally:
        release_long_lived()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds
