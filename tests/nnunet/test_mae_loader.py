"""The MAE trainer's image-only loader (issue 22): the same crops as nnU-Net's loader from the same random
stream, zero padding where a case is smaller than the crop, and nnU-Net's own batch wherever the fast path
does not apply."""

from __future__ import annotations

import numpy as np
import pytest
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunetv2_petct.nnunet.mae_loader import MAEPatchLoader, _crop_boxes
from nnunetv2_petct.nnunet.trainers.mae import nnUNetTrainerPETCTMAE, nnUNetTrainerPETCTMAE_CPUAugment

CROP = (12, 20, 20)


@pytest.fixture(scope="module")
def blosc2_dataset(tmp_path_factory):
    """Three preprocessed cases written by nnU-Net's own blosc2 writer; one smaller than the crop in z and y."""
    folder = tmp_path_factory.mktemp("b2nd")
    rng = np.random.default_rng(3)
    shapes = {"a": (30, 40, 36), "b": (25, 33, 45), "small": (8, 15, 30)}
    for name, shape in shapes.items():
        data = rng.normal(size=(2, *shape)).astype(np.float32)
        seg = (rng.random((1, *shape)) > 0.5).astype(np.int8)
        props = {"class_locations": {1: np.argwhere(seg > 0)[:50]}, "spacing": [3.0, 2.0, 2.0]}
        nnUNetDatasetBlosc2.save_case(data, seg, props, str(folder / name), chunks=(1, 8, 16, 16),
                                      blocks=(1, 4, 8, 8), chunks_seg=(1, 8, 16, 16), blocks_seg=(1, 4, 8, 8))
    return nnUNetDatasetBlosc2(str(folder))


def _labels() -> LabelManager:
    return LabelManager({"background": 0, "body": 1}, regions_class_order=None)


def _pair(dataset, **kw):
    args = (dataset, 3, CROP, (10, 16, 16), _labels())
    return MAEPatchLoader(*args, **kw), nnUNetDataLoader(*args, **kw)


def test_crop_boxes_by_hand():
    # inside: no padding
    assert _crop_boxes((30, 40), (5, 0), (12, 20)) == ((slice(5, 17), slice(0, 20)), (slice(0, 12), slice(0, 20)),
                                                       False)
    # 2 voxels before the volume and past its end on the first axis (8 voxels, crop 12 from -2)
    src, dst, pad = _crop_boxes((8, 40), (-2, 20), (12, 20))
    assert src == (slice(0, 8), slice(20, 40)) and dst == (slice(2, 10), slice(0, 20)) and pad


def test_same_batches_as_nnunet_from_the_same_random_stream(blosc2_dataset):
    ours, theirs = _pair(blosc2_dataset)
    seen = set()
    for seed in range(6):
        np.random.seed(seed)
        a = ours.generate_train_batch()
        np.random.seed(seed)
        b = theirs.generate_train_batch()
        assert list(a["keys"]) == list(b["keys"])
        seen.update(a["keys"])
        assert a["data"].shape == b["data"].shape == (3, 2, *CROP)
        np.testing.assert_array_equal(a["data"].numpy(), b["data"].numpy())  # padding (small case) included
        assert a["target"] is None and b["target"] is not None
    assert "small" in seen  # the padded case was among the compared batches


def test_small_case_is_zero_padded(blosc2_dataset):
    loader = MAEPatchLoader(blosc2_dataset, 1, CROP, (10, 16, 16), _labels())
    loader.indices = ["small"]
    loader.get_indices = lambda: ["small"]
    np.random.seed(0)
    batch = loader.generate_train_batch()["data"].numpy()[0]
    data = blosc2_dataset.load_case("small")[0][:]
    # z: 8 voxels in a 12-voxel crop -> 2 zero slices each side (nnU-Net centres the padding);
    # y: 15 rows in 20 -> 5 zero rows, split 2/3 or 3/2 by the random offset; x: 30 columns, no padding
    assert np.all(batch[:, :2] == 0) and np.all(batch[:, 10:] == 0)
    rows_with_data = np.flatnonzero(np.any(batch[:, 2:10] != 0, axis=(0, 1, 3)))
    assert len(rows_with_data) == 15 and rows_with_data[0] in (2, 3)
    y0 = int(rows_with_data[0])
    inner = batch[:, 2:10, y0:y0 + 15]
    # the inner block is a crop of the case: the whole z and y extent and 20 consecutive x columns
    x0 = next(x for x in range(30 - 20 + 1) if np.array_equal(data[:, :, :, x:x + 20], inner))
    assert 0 <= x0 <= 10


def test_falls_back_to_nnunet_where_labels_are_needed(blosc2_dataset):
    ours, theirs = _pair(blosc2_dataset, oversample_foreground_percent=0.5)
    np.random.seed(1)
    a = ours.generate_train_batch()
    np.random.seed(1)
    b = theirs.generate_train_batch()
    assert a["target"] is not None
    np.testing.assert_array_equal(a["data"].numpy(), b["data"].numpy())
    np.testing.assert_array_equal(a["target"].numpy(), b["target"].numpy())


def test_trainer_pipelines_choose_their_loader():
    assert nnUNetTrainerPETCTMAE.training_loader_class() is MAEPatchLoader
    assert nnUNetTrainerPETCTMAE_CPUAugment.training_loader_class() is nnUNetDataLoader
