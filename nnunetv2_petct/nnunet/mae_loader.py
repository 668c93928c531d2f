"""The MAE pretraining loader: decompress and crop the image, nothing else (issue 22).

MAE pretraining reconstructs the image: it needs neither the label nor the case's properties, and with the
zoom and mirroring on the training device (:mod:`nnunetv2_petct.pretraining.augment`) the loader's whole job
is to cut the source patch (the plans' patch plus the zoom margin) out of the blosc2 volume.
:class:`MAEPatchLoader` does exactly that and writes it straight into the batch: per sample it opens the
image array only (no ``_seg.b2nd``, no ``.pkl``), draws the crop with nnU-Net's own ``get_bbox`` (so the
crop positions follow the same distribution and the same ``np.random`` stream as ``nnUNetDataLoader``), and
decompresses the crop into its place in the batch array (``blosc2.NDArray.read_into`` where blosc2 has it:
no temporary array, no torch copies). Voxels outside the volume (cases smaller than the crop) are 0, as
nnU-Net pads the image.

Everything else falls back to ``nnUNetDataLoader.generate_train_batch`` unchanged: loader transforms (the MAE
trainer adds one only for normalisation inside a mask, which needs the segmentation), foreground
oversampling, ignore labels, 2D configurations, cascades and dataset classes other than blosc2. The batch's
``target`` is None: the MAE steps never read it.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)


def _crop_boxes(shape, lbs, patch) -> tuple[tuple[slice, ...], tuple[slice, ...], bool]:
    """For a crop of ``patch`` voxels starting at ``lbs`` (may be negative or run past ``shape``): the source
    slices inside the volume, the destination slices inside the patch, and whether any voxel is outside."""
    src, dst, pad = [], [], False
    for s, lb, p in zip(shape, lbs, patch):
        lo, hi = max(int(lb), 0), min(int(lb) + int(p), int(s))
        if hi <= lo:  # the crop misses the volume on this axis (cannot happen with get_bbox's bounds)
            lo = hi = 0
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(lb), hi - int(lb)))
        pad = pad or lo != lb or hi - lo != p
    return tuple(src), tuple(dst), pad


def read_crop_into(array, out: np.ndarray, src: tuple[slice, ...]) -> None:
    """Decompress ``array[(:, *src)]`` into ``out`` (a view of the batch): ``blosc2.NDArray.read_into`` when the
    installed blosc2 has it, else through one temporary (``out[...] = array[...]``)."""
    key = (slice(None), *src)
    read_into = getattr(array, "read_into", None)
    if read_into is not None:
        read_into(out, key)
    else:
        out[...] = array[key]


class MAEPatchLoader(nnUNetDataLoader):
    """``nnUNetDataLoader`` for MAE pretraining: image-only crops written straight into the batch (module doc).

    Same constructor as ``nnUNetDataLoader``; ``patch_size`` is the crop (the source patch of the device-side
    zoom), as nnU-Net's "initial patch size".
    """

    def _image_only(self) -> bool:
        """True when the fast path applies; otherwise ``generate_train_batch`` is nnU-Net's."""
        from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

        transforms = getattr(self.transforms, "transforms", None)
        no_transforms = self.transforms is None or (transforms is not None and len(transforms) == 0)
        return (no_transforms and self.oversample_foreground_percent == 0 and not self.has_ignore
                and not self.patch_size_was_2d and isinstance(self._data, nnUNetDatasetBlosc2)
                and getattr(self._data, "folder_with_segs_from_previous_stage", None) is None)

    def open_image(self, identifier: str):
        """The case's image array (channels first), opened read-only and memory-mapped as nnU-Net opens it."""
        import blosc2

        path = os.path.join(self._data.source_folder, identifier + ".b2nd")
        return blosc2.open(urlpath=path, mode="r", dparams={"nthreads": 1}, **self._data.mmap_kwargs)

    def generate_train_batch(self) -> dict:
        if not self._image_only():
            return super().generate_train_batch()
        keys = self.get_indices()
        patch = [int(p) for p in self.patch_size]
        batch = None
        with threadpool_limits(limits=1, user_api=None):
            for j, key in enumerate(keys):
                image = self.open_image(key)
                if batch is None:
                    batch = np.empty((self.batch_size, image.shape[0], *patch), dtype=np.float32)
                elif image.shape[0] != batch.shape[1]:
                    raise ValueError(f"case {key} has {image.shape[0]} channels, the batch {batch.shape[1]}")
                shape = image.shape[1:]
                lbs, _ = self.get_bbox(shape, False, None)
                src, dst, pad = _crop_boxes(shape, lbs, patch)
                sample = batch[j]
                if pad:
                    sample.fill(0)
                if image.dtype == np.float32:
                    read_crop_into(image, sample[(slice(None), *dst)], src)
                else:  # other stored dtypes: one conversion
                    sample[(slice(None), *dst)] = image[(slice(None), *src)]
        return {"data": torch.from_numpy(batch), "target": None, "keys": keys}
