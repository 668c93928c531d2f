"""Benchmark: seconds per case for the stock ``nnUNetv2_predict`` of a fine-tuned-like PET/CT model.

What runs (all in a temporary nnU-Net tree, deleted at the end unless ``keep=True``):

1. ``n_cases`` lesion-bearing phantoms (:mod:`nnunetv2_petct.phantoms`; "full": PET 326x400x400 at
   3 x 2.04 x 2.04 mm, CT resampled onto it) written as a raw dataset;
2. stock ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres --no_pp`` gives nnU-Net's default plans, i.e.
   the real architecture and patch size for such data (full size: PlainConvUNet, 6 stages, 32-320
   features, patch 128^3);
3. a results folder ``nnUNetTrainerPETCT__nnUNetPlans__3d_fullres/fold_0/checkpoint_final.pth`` with
   *randomly initialized* weights of exactly that network (see
   :func:`~nnunetv2_petct.benchmarks._nnunet_fixtures.write_model_folder`). Random weights cost the same
   compute as trained ones (same layers, same sliding window; only the segmentation it writes is
   meaningless), so no training is needed;
4. the stock command, timed with ``perf_counter`` around the subprocess, once per mirroring setting::

       nnUNetv2_predict -i IN -o OUT -d ID -tr nnUNetTrainerPETCT -c 3d_fullres -f 0 \\
           -npp 1 -nps 1 -device DEVICE --disable_progress_bar --verbose [--disable_tta]

   ``-npp 1 -nps 1``: one preprocessing and one export worker (the machine-independent setting; nnU-Net's
   default is 3 each), so the figure is the per-case cost, not a measure of parallel I/O. The time includes
   process start-up (importing torch and nnU-Net, finding the trainer class), preprocessing, the sliding
   window (step 0.5, Gaussian weighting) and the export of the segmentation. With mirroring (nnU-Net's test-
   time augmentation, the default) every window is predicted 8 times (all flips of the 3 axes).

On a CPU a full-size case is far too slow to measure here (180 windows of 128^3 through the full network,
times 8 with mirroring), so ``crop="auto"`` (the default) predicts, on CPU only, a centred crop of the
full-size case the size of one patch (one window) with the full-size plans and network, and extrapolates:
the per-window seconds come from the difference between the two mirroring settings (7 extra forward
passes per window), and the full-case estimate is the measured crop time plus the extra windows. That
estimate leaves out the extra preprocessing/export work of the larger volume, so it is a lower bound. The
result says which was measured (``measured_on``). On GPU (``device="cuda"``) the whole volume is predicted.

``run()`` prints nothing; it returns the figures as a dict.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from nnunetv2_petct.benchmarks import _nnunet_fixtures as fx
from nnunetv2_petct.nnunet.env import console_script, nnunet_env

logger = logging.getLogger(__name__)

DATASET_ID = 987
DATASET_NAME = "BenchPredictPETCT"
CONFIGURATION = "3d_fullres"
#: forward passes per window with mirroring on 3 axes: the identity + 7 flip combinations.
MIRROR_FORWARDS_3D = 8


def _parse_n_steps(output: str) -> list[int]:
    """The ``n_steps N`` values nnU-Net's predictor prints with ``--verbose`` (one per case)."""
    return [int(m.group(1)) for m in re.finditer(r"n_steps (\d+)", output)]


def _n_windows(shape_zyx: Sequence[int], patch: Sequence[int], step_size: float) -> int:
    """Sliding-window positions of nnU-Net's predictor for a preprocessed image of this shape: nnU-Net's
    ``compute_steps_for_sliding_window`` on the image padded up to the patch (as the predictor pads it).
    Example: 326x400x400 with a 128^3 patch and step 0.5 -> 5 x 6 x 6 = 180."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    padded = [max(int(s), int(p)) for s, p in zip(shape_zyx, patch)]
    return math.prod(len(steps) for steps in compute_steps_for_sliding_window(padded, list(patch), step_size))


def _preprocessed_shape(shape_zyx: Sequence[int], spacing_zyx: Sequence[float], target_zyx: Sequence[float]):
    """nnU-Net's resampled shape: ``round(shape * spacing / target_spacing)`` per axis."""
    return [int(round(s * sp / t)) for s, sp, t in zip(shape_zyx, spacing_zyx, target_zyx)]


def _image_geometry_zyx(path: Path) -> tuple[list[int], list[float]]:
    """(shape, spacing) in (z, y, x) from an image header (SimpleITK reports (x, y, z))."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return list(reader.GetSize())[::-1], list(reader.GetSpacing())[::-1]


def _dataset_id(folder: Path) -> int:
    name = Path(folder).name
    if not (name.startswith("Dataset") and name[7:10].isdigit()):
        raise ValueError(f"{folder} is not an nnU-Net DatasetXXX_Name folder")
    return int(name[7:10])


def run(device: str = "cpu", size: str = "full", mirroring: Sequence[bool] = (False, True), n_cases: int = 1,
        crop: str | Sequence[int] | None = "auto", step_size: float = 0.5,
        preprocessed_folder: str | os.PathLike | None = None, images_folder: str | os.PathLike | None = None,
        keep: bool = False, workdir: str | os.PathLike | None = None, timeout_s: float = 3600) -> dict:
    """Time stock ``nnUNetv2_predict`` per case, with and without mirroring.

    Args:
        device: "cpu" or "cuda" (passed to ``nnUNetv2_predict -device``).
        size: phantom size, "full" (the real case), "small" or "tiny" (tests); each gets its own default
            plans.
        mirroring: the settings to time (False = ``--disable_tta``).
        n_cases: cases predicted by one command; the figure is total seconds / n_cases.
        crop: "auto" = a centred one-patch crop when ``device == "cpu"`` and ``size == "full"``, the whole
            volume otherwise; None = whole volume; (z, y, x) = that crop.
        step_size: ``-step_size`` (nnU-Net default 0.5).
        preprocessed_folder, images_folder: use an existing planned dataset (its ``nnUNetPlans.json``,
            ``dataset.json``, ``dataset_fingerprint.json``) and raw images (``<case>_0000.nii.gz``, ...)
            instead of phantoms (``size`` is then ignored); the model folder still goes to a temporary
            ``nnUNet_results``.
        keep: keep the temporary tree (its path is returned as ``workdir``).
        workdir: where to build the tree (default: a new temporary folder).
        timeout_s: per-command limit.

    Returns:
        A dict with ``seconds_per_case_no_mirroring`` / ``seconds_per_case_mirroring`` (measured, for what
        ``measured_on`` says), ``patch_size``, ``n_steps_measured`` (windows per case, from the predictor's
        verbose output), ``n_steps_full_volume``, ``seconds_per_window_forward`` (derived when both mirroring
        settings ran), full-case estimates when a crop was measured, ``setup_seconds``, load averages and
        notes. Raises ValueError for a bad device/size/crop/folder, RuntimeError when a command fails.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch sees no CUDA device")
    if size not in ("full", "small", "tiny"):
        raise ValueError(f"size must be 'full', 'small' or 'tiny', got {size!r}")
    if (preprocessed_folder is None) != (images_folder is None):
        raise ValueError("give both preprocessed_folder and images_folder, or neither")
    mirroring = [bool(m) for m in mirroring]
    if not mirroring:
        raise ValueError("mirroring must list at least one setting")
    load_before = os.getloadavg()

    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="bench_predict_"))
    setup: dict[str, float] = {}
    try:
        env = nnunet_env(root)
        if preprocessed_folder is None:
            t0 = time.perf_counter()
            raw = fx.write_phantom_dataset(root / "raw", DATASET_ID, DATASET_NAME, size, n_cases=max(1, n_cases))
            setup["write_phantoms"] = round(time.perf_counter() - t0, 1)
            planned = fx.plan_dataset(env, DATASET_ID, preprocess=False, configuration=CONFIGURATION,
                                      timeout_s=timeout_s)
            setup["plan"] = round(planned["seconds"], 1)
            preprocessed_folder = planned["preprocessed_folder"]
            images_folder = raw / "imagesTr"
            source = f"{size}-size phantom"
        else:
            source = f"dataset {Path(preprocessed_folder).name}"
        preprocessed_folder, images_folder = Path(preprocessed_folder), Path(images_folder)
        dataset_id = _dataset_id(preprocessed_folder)
        plans = json.loads((preprocessed_folder / f"{fx.DEFAULT_PLANS}.json").read_text())
        config = plans["configurations"][CONFIGURATION]
        patch = [int(p) for p in config["patch_size"]]
        target = [float(s) for s in config["spacing"]]
        t0 = time.perf_counter()
        model_folder = fx.write_model_folder(preprocessed_folder, root / "results", configuration=CONFIGURATION)
        setup["write_random_weight_model"] = round(time.perf_counter() - t0, 1)

        case_ids = sorted(p.name[: -len("_0000.nii.gz")] for p in images_folder.glob("*_0000.nii.gz"))
        if len(case_ids) < n_cases:
            raise ValueError(f"{images_folder} has {len(case_ids)} cases, {n_cases} requested")
        case_ids = case_ids[: max(1, n_cases)]
        n_channels = len(json.loads((preprocessed_folder / "dataset.json").read_text())["channel_names"])
        shape0, spacing0 = _image_geometry_zyx(images_folder / f"{case_ids[0]}_0000.nii.gz")
        full_shape = _preprocessed_shape(shape0, spacing0, target)

        crop_zyx = None
        if crop == "auto":
            crop_zyx = patch if (device == "cpu" and size == "full" and source.endswith("phantom")) else None
        elif crop is not None:
            crop_zyx = [int(c) for c in crop]
            if len(crop_zyx) != 3 or min(crop_zyx) < 1:
                raise ValueError(f"crop must be 3 positive sizes (z, y, x), got {crop!r}")
        input_dir = root / "predict_in"
        input_dir.mkdir(parents=True, exist_ok=True)
        if crop_zyx is None:
            for cid in case_ids:
                for c in range(n_channels):
                    name = f"{cid}_{c:04d}.nii.gz"
                    (input_dir / name).symlink_to((images_folder / name).resolve())
            measured_shape = full_shape
            measured_on = "whole volume"
        else:
            shapes = [fx.crop_raw_images(images_folder, cid, input_dir, crop_zyx, n_channels) for cid in case_ids]
            measured_shape = _preprocessed_shape(shapes[0], spacing0, target)
            measured_on = f"centred crop {'x'.join(map(str, shapes[0]))} (z, y, x) of the {source}"

        results: dict[bool, dict] = {}
        from nnunetv2_petct.nnunet.predictor import read_model_checkpoint

        # weights-only readable (our check) before stock nnUNetv2_predict unpickles it
        read_model_checkpoint(Path(model_folder) / "fold_0" / "checkpoint_final.pth")
        for mirror in mirroring:
            out_dir = root / f"predict_out_{'tta' if mirror else 'notta'}"
            cmd = [console_script("nnUNetv2_predict"), "-i", str(input_dir), "-o", str(out_dir),
                   "-d", str(dataset_id), "-tr", fx.DEFAULT_TRAINER, "-c", CONFIGURATION, "-f", "0",
                   "-step_size", str(step_size), "-npp", "1", "-nps", "1", "-device", device,
                   "--disable_progress_bar", "--verbose"]
            if not mirror:
                cmd.append("--disable_tta")
            seconds, output = fx.run_command(cmd, env, timeout_s)
            written = sorted(p.name for p in out_dir.glob("*.nii.gz"))
            if len(written) != len(case_ids):
                raise RuntimeError(f"nnUNetv2_predict wrote {len(written)} segmentations for {len(case_ids)} "
                                   f"cases in {out_dir}:\n{output[-3000:]}")
            steps = _parse_n_steps(output)
            results[mirror] = {"seconds": seconds, "n_steps": steps, "command": " ".join(
                ["nnUNetv2_predict", *cmd[1:]]).replace(str(root), "$TMP")}
            logger.info("predict mirroring=%s: %.1f s for %d case(s)", mirror, seconds, len(case_ids))

        n_steps_measured = None
        for r in results.values():
            if r["n_steps"]:
                n_steps_measured = r["n_steps"][0]
        if n_steps_measured is None:
            n_steps_measured = _n_windows(measured_shape, patch, step_size)
        n_steps_full = _n_windows(full_shape, patch, step_size)
        n = len(case_ids)
        out = {
            "device": device,
            "source": source,
            "measured_on": measured_on,
            "n_cases": n,
            "full_volume_shape_zyx": full_shape,
            "target_spacing_mm": target,
            "patch_size": patch,
            "network": config["architecture"]["network_class_name"].rsplit(".", 1)[-1],
            "features_per_stage": config["architecture"]["arch_kwargs"].get("features_per_stage"),
            "step_size": step_size,
            "n_steps_measured": n_steps_measured,
            "n_steps_full_volume": n_steps_full,
        }
        for mirror, r in results.items():
            key = "mirroring" if mirror else "no_mirroring"
            out[f"seconds_per_case_{key}"] = round(r["seconds"] / n, 2)
            out[f"command_{key}"] = r["command"]
        if True in results and False in results:
            extra = (results[True]["seconds"] - results[False]["seconds"]) / n
            per_window = extra / ((MIRROR_FORWARDS_3D - 1) * n_steps_measured)
            if per_window <= 0:  # the mirrored run was not slower: timing noise swamps a tiny forward pass
                out["per_window_note"] = ("the run with mirroring was not slower than the one without (timing "
                                          "noise at this size): seconds_per_window_forward is not measurable here "
                                          "and the estimates add nothing for the missing windows")
                per_window = 0.0
            out["seconds_per_window_forward"] = round(per_window, 3)
            out["mirroring_slowdown"] = round(results[True]["seconds"] / results[False]["seconds"], 2)
            if crop_zyx is not None:
                more = n_steps_full - n_steps_measured
                out["estimated_seconds_full_case_no_mirroring"] = round(
                    results[False]["seconds"] / n + more * per_window, 1)
                out["estimated_seconds_full_case_mirroring"] = round(
                    results[True]["seconds"] / n + more * MIRROR_FORWARDS_3D * per_window, 1)
                out["estimate_note"] = ("lower bound: measured crop time + (full-volume windows - measured "
                                        "windows) x forward passes x seconds_per_window_forward; the larger "
                                        "volume's extra preprocessing/export is not included")
        out.update({
            "setup_seconds": setup,
            "weights": "random initialization (same compute as trained weights; segmentation meaningless)",
            "workers": "-npp 1 -nps 1",
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "note": ("CPU figures: nnUNetv2_predict on a CPU is slow (minutes to hours per full-size case); "
                     "use only same-run ratios from CPU runs, absolute times from GPU runs"
                     if device == "cpu" else "GPU run"),
            "model_folder": str(model_folder.relative_to(root)),
        })
        if keep:
            out["workdir"] = str(root)
        return out
    finally:
        if not keep and workdir is None:
            shutil.rmtree(root, ignore_errors=True)
