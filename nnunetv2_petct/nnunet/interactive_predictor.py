"""Click-guided prediction with an interactive model (``nnUNetTrainerPETCTInteractive*``), study by study.

:class:`InteractiveSession` is the object a viewer drives: it reads and preprocesses one study once (nnU-Net's
own preprocessor: transpose, crop, normalization, resampling), then each :meth:`InteractiveSession.predict`
renders the click channels in the preprocessed grid (the clicks mapped from PET voxel indices through nnU-Net's
crop and resampling, :func:`~nnunetv2_petct.interactive.heatmaps.map_points_to_preprocessed`), runs nnU-Net's
sliding window (TTA and fold ensemble as configured) and exports the mask onto the input grid with nnU-Net's
own export. Nothing is re-read or re-preprocessed per click: a click costs one sliding-window pass.

:class:`InteractiveLesionPredictor` is the :class:`~nnunetv2_petct.clinical.pipeline.LesionPredictor` of
``nnUNetv2_petct_predict --clicks``: each study gets its own clicks (a case without clicks = the model's
non-interactive result).

Clicks are autoPET IV voxel indices ``[x, y, z]`` of the PET image (:mod:`nnunetv2_petct.interactive.clicks`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nnunetv2_petct.interactive.clicks import Clicks, check_clicks_in_image
from nnunetv2_petct.interactive.heatmaps import (
    DEFAULT_SIGMA_MM,
    click_heatmap,
    effective_sigma_mm,
    map_points_to_preprocessed,
)
from nnunetv2_petct.nnunet.predictor import ModelSelectionError, NnUNetLesionPredictor

logger = logging.getLogger(__name__)

INTERACTIVE_PREFIX = "nnUNetTrainerPETCTInteractive"


def is_interactive_trainer(trainer_name: str) -> bool:
    """True for our click-guided trainers (``nnUNetTrainerPETCTInteractive*``)."""
    return str(trainer_name).startswith(INTERACTIVE_PREFIX)


class InteractiveSession:
    """One open study of an interactive model: preprocessed once, predicted per click set.

    Args:
        predictor: nnU-Net's ``nnUNetPredictor``, initialised with an interactive model
            (:meth:`InteractiveLesionPredictor.session` makes one).
        image_files: ``[ct_file, pet_file]`` (CT on the PET grid, as nnU-Net's inputs), or None with
            ``arrays``.
        arrays: ``(ct_zyx, pet_zyx, spacing_mm_zyx)`` instead of files (a viewer that holds the volumes).
        sigma_mm: click heatmap sigma (the trainer's).

    Attributes:
        shape_zyx: the PET grid (clicks are checked against it).
        clicks: the clicks of the latest prediction.
    """

    def __init__(self, predictor, image_files: Sequence[str | os.PathLike] | None = None, *,
                 arrays: tuple[np.ndarray, np.ndarray, Sequence[float]] | None = None,
                 sigma_mm: float = DEFAULT_SIGMA_MM, quiet: bool = True):
        if (image_files is None) == (arrays is None):
            raise ValueError("give image_files or arrays")
        self.predictor = predictor
        self.sigma_mm = float(sigma_mm)
        self.quiet = quiet
        pm, cm = predictor.plans_manager, predictor.configuration_manager
        preprocessor = cm.preprocessor_class(verbose=False)
        with self._silence():
            if image_files is not None:
                data, _, props = preprocessor.run_case([str(p) for p in image_files], None, pm, cm,
                                                       predictor.dataset_json)
            else:
                ct, pet, spacing = arrays
                stacked = np.stack([np.asarray(ct, np.float32), np.asarray(pet, np.float32)])
                props = {"spacing": [float(s) for s in spacing]}
                data, _, props = preprocessor.run_case_npy(stacked, None, props, pm, cm, predictor.dataset_json)
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.properties = props
        inv = np.argsort(pm.transpose_forward)
        self.shape_zyx = tuple(int(props["shape_before_cropping"][i]) for i in inv)
        self.clicks = Clicks()
        self._spacing_pp = tuple(float(s) for s in cm.spacing)

    def _silence(self):
        return contextlib.redirect_stdout(io.StringIO()) if self.quiet else contextlib.nullcontext()

    def click_channels(self, clicks: Clicks) -> np.ndarray:
        """The two click channels (tumor, background) in the preprocessed grid."""
        pm = self.predictor.plans_manager
        props = self.properties
        shape = self.data.shape[1:]
        maps = []
        for pts in (clicks.tumor_zyx(), clicks.background_zyx()):
            if len(pts) == 0:
                maps.append(np.zeros(shape, np.float32))
                continue
            mapped = map_points_to_preprocessed(
                np.asarray(pts, float), transpose_forward=pm.transpose_forward,
                bbox=props["bbox_used_for_cropping"],
                shape_after_crop=props["shape_after_cropping_and_before_resampling"], shape_after_resample=shape)
            maps.append(click_heatmap(mapped, shape, self._spacing_pp, effective_sigma_mm(self.sigma_mm, self._spacing_pp)))
        return np.stack(maps).astype(np.float32)

    def _run(self, clicks: Clicks | None, source: str, probabilities: bool):
        import torch
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        clicks = clicks if clicks is not None else Clicks()
        check_clicks_in_image(clicks, self.shape_zyx, source=source)
        x = np.concatenate([self.data, self.click_channels(clicks)], axis=0)
        p = self.predictor
        with self._silence():
            logits = p.predict_logits_from_preprocessed_data(torch.from_numpy(x)).cpu()
            out = convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, p.plans_manager, p.configuration_manager, p.label_manager, self.properties, probabilities)
        self.clicks = clicks
        return out

    def predict(self, clicks: Clicks | None = None, source: str = "clicks") -> np.ndarray:
        """The lesion mask (uint8, PET grid, array order z, y, x) for ``clicks`` (None or empty = no click).

        Raises:
            ClickFileError: a click outside the PET image (named, with ``source``).
        """
        return np.asarray(self._run(clicks, source, False)).astype(np.uint8)

    def predict_with_probability(self, clicks: Clicks | None = None, source: str = "clicks"
                                 ) -> tuple[np.ndarray, np.ndarray]:
        """``(mask, lesion probability)`` on the PET grid (the probability: nnU-Net's softmax of the lesion
        class, float32), e.g. for a viewer's soft overlay."""
        seg, prob = self._run(clicks, source, True)
        return np.asarray(seg).astype(np.uint8), np.asarray(prob[-1], dtype=np.float32)

    def add_click(self, kind: str, xyz: Sequence[int]) -> np.ndarray:
        """Add one click (``"tumor"`` or ``"background"``) to the current clicks and predict."""
        return self.predict(self.clicks.add(kind, xyz))

    def write(self, mask_zyx: np.ndarray, path: str | os.PathLike) -> Path:
        """Write a mask of :meth:`predict` with the input's geometry (nnU-Net's writer: .nii.gz, .mha, ...)."""
        from nnunetv2_petct.io import atomic_write

        path = Path(path)
        rw = self.predictor.plans_manager.image_reader_writer_class()
        with atomic_write(path) as tmp:  # the temporary name keeps the suffixes (the writer's format)
            rw.write_seg(mask_zyx, str(tmp), self.properties)
        return path


class InteractiveLesionPredictor(NnUNetLesionPredictor):
    """:class:`NnUNetLesionPredictor` for an interactive model, predicting each study with its own clicks.

    Args:
        clicks_by_case: study name -> :class:`Clicks` (a study without an entry gets no clicks); see
            :func:`nnunetv2_petct.interactive.clicks.read_clicks` / ``read_click_folder``.
        other arguments: as :class:`NnUNetLesionPredictor`.

    Raises:
        ModelSelectionError: the model is not an interactive one (its folder name names the trainer).
    """

    def __init__(self, model_folder, *args, clicks_by_case: Mapping[str, Clicks] | None = None,
                 click_sources: Mapping[str, str] | None = None, **kwargs):
        super().__init__(model_folder, *args, **kwargs)
        trainer = self._parts()[0]
        if not is_interactive_trainer(trainer):
            raise ModelSelectionError(f"{self.model_folder}: clicks need a click-guided model "
                                      f"({INTERACTIVE_PREFIX}*, e.g. nnUNetv2_train ... -tr "
                                      f"{INTERACTIVE_PREFIX}); this one was trained with {trainer}")
        from nnunetv2_petct.nnunet.registry import find_trainer_class

        cls = find_trainer_class(trainer)
        #: the click heatmap sigma the model was trained with (the trainer's class attribute)
        self.sigma_mm = float(getattr(cls, "click_sigma_mm", DEFAULT_SIGMA_MM))
        self.clicks_by_case = dict(clicks_by_case or {})
        self.click_sources = dict(click_sources or {})

    def identification(self) -> dict:
        ident = super().identification()
        ident["parameters"]["clicks"] = "per study (see report.json)"
        ident["interactive"] = {"clicks": {k: v.to_json() for k, v in self.clicks_by_case.items()}}
        return ident

    def session(self, image_files: Sequence[str | os.PathLike] | None = None, **kwargs) -> InteractiveSession:
        """An :class:`InteractiveSession` for one study (the network is loaded once per predictor)."""
        kwargs.setdefault("sigma_mm", self.sigma_mm)
        return InteractiveSession(self._get_predictor(), image_files, quiet=self.quiet, **kwargs)

    def predict(self, cases: Mapping[str, Sequence[Path]], output_dir: Path) -> None:
        """``output_dir/<name>.nii.gz`` for each ``{name: [ct_file, pet_file]}``, each with its clicks."""
        for name, files in cases.items():
            s = self.session(files)
            mask = s.predict(self.clicks_by_case.get(name, Clicks()), source=self.click_sources.get(name, "clicks"))
            s.write(mask, Path(output_dir) / f"{name}.nii.gz")
