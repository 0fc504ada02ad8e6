"""The easy-dataset check of the contract suite (#16, item 5): its dataset, and a non-learner failing it."""
import numpy as np
import pytest
import torch

from fer_bench import checks
from fer_bench.registry import get_method


def test_easy_dataset_is_2_1_1_1_and_its_class_is_the_centre_colour():
    data = checks.easy_dataset(split="train")
    assert np.bincount(data.labels).tolist() == [96, 48, 48, 48]
    centre = data.images[:, 12, 12].astype(float)                                     # (N, 3)
    nearest = ((centre[:, None, :] - checks.EASY_COLOURS[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(nearest, data.labels)
    flipped = data.images[:, :, ::-1]                                       # a horizontal flip keeps the class
    assert np.array_equal(flipped[:, 9:15, 9:15], data.images[:, 9:15, 9:15])
    again = checks.easy_dataset(split="train")
    assert np.array_equal(again.images, data.images) and data.fingerprint == again.fingerprint
    assert not np.array_equal(checks.easy_dataset(split="test").images[:10], data.images[:10])


class LabelBlindTriplet(get_method("triplet")):
    """A sampler bug: each batch reaches the loss with its labels shuffled, so training carries no class
    information; the network still moves, and the kNN gallery still holds the true labels."""

    registered_name = "label_blind_triplet"

    def make_batch(self, index, generator):
        batch = super().make_batch(index, generator)
        batch["y"] = batch["y"][torch.randperm(len(batch["y"]), generator=generator)]
        return batch


def test_easy_check_fails_a_method_that_does_not_learn(tmp_path):
    # Its untrained network's kNN already clears the majority class by 10 points here (about 62 % against 40 %):
    # only the comparison with that untrained network catches it.
    params = {**LabelBlindTriplet.resolve_params("test"), "device": "cpu"}
    assert params["sampling"] == "batch_all"
    with pytest.raises(AssertionError, match="the untrained network"):
        checks.check_beats_its_untrained_network_on_an_easy_dataset(LabelBlindTriplet, params, None, None, tmp_path)
