"""Size-bucketed batches: dense, still random per epoch, and exactly resumable."""

import numpy as np

from molbridge.core.data.batching import bucketed, by_size, padding_fraction
from molbridge.core.loop import ResumableSampler


def test_bucketed_keeps_the_items_and_makes_batches_dense():
    rng = np.random.default_rng(0)
    sizes = rng.integers(5, 120, size=640)
    order = rng.permutation(640).tolist()
    regrouped = bucketed(order, sizes, batch_size=32, seed=1, chunk=10)
    assert sorted(regrouped) == sorted(order)  # every item once
    random_batches = [order[i : i + 32] for i in range(0, 640, 32)]
    dense = [regrouped[i : i + 32] for i in range(0, 640, 32)]
    assert padding_fraction(dense, sizes) < 0.1 < 0.4 < padding_fraction(random_batches, sizes)
    assert padding_fraction(dense, sizes, power=2) < padding_fraction(random_batches, sizes, power=2)
    assert bucketed(order, sizes, 32, seed=1, chunk=10) == regrouped  # a function of its arguments
    assert bucketed(order, sizes, 32, seed=2, chunk=10) != regrouped  # another epoch, another batch order


def test_by_size_batches_cover_every_item_in_ascending_size():
    sizes = [9, 3, 7, 1, 5]
    batches = by_size(sizes, 2)
    assert batches == [[3, 1], [4, 2], [0]]
    assert padding_fraction([[0, 1, 2, 3, 4]], sizes) == 1 - 25 / 45


def test_a_bucketed_sampler_resumes_mid_epoch_exactly():
    sizes = np.random.default_rng(3).integers(5, 60, size=96)
    straight = ResumableSampler(96, seed=7, sizes=sizes, batch_size=8)
    whole = list(straight)
    resumed = ResumableSampler(96, seed=7, sizes=sizes, batch_size=8)
    resumed.load_state_dict({"epoch": 0, "position": 40})
    assert list(resumed) == whole[40:]
    straight.next_epoch()
    assert sorted(straight) == sorted(whole) and list(straight) != whole  # a new shuffle each epoch
