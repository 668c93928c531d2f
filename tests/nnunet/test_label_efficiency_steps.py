"""Label-efficiency runner, its steps on synthetic inputs (no nnU-Net dataset, no training): the design record,
folds, runs and commands, the predict/evaluate seam with prediction variants, tabulate; and, through the real
CLI on the tiny dataset, that bad arguments are refused before anything is written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli, run

C2P = {f"c{i}": f"P{i}" for i in range(8)}
TEST = ["c7"]
DESIGN_KEYS = ["dataset_name", "configuration", "plans", "seed", "pool", "val", "test", "test_source", "subsets",
               "splits_file", "seeds"]


def _design(tmp_path: Path, seeds: int = 1, **kw):
    """A :class:`Design` as :func:`make_design` returns it (folds -1), built from :func:`design_subsets`."""
    from nnunetv2_petct.nnunet.label_efficiency import Design, Subset, design_subsets

    pool, val, subsets = design_subsets(C2P, TEST, [0.5, 1.0], val_fraction=0.2, seed=3, n_seeds=seeds)
    trainers = kw.pop("trainers", {"pretrained": "nnUNetTrainerPETCTFinetune_tiny",
                                   "scratch": "nnUNetTrainerPETCTScratch_tiny"})
    return Design(
        "Dataset999_Synthetic", "3d_fullres", "nnUNetPlans", 3, pool, val, TEST, "case list",
        [Subset(s["name"], -1, s["train"], s["fraction"], s["requested_fraction"], s["shots"], s["replicate"],
                s["seed"], s["run_name"]) for s in subsets],
        str(tmp_path / "pre" / "splits_final.json"), seeds, out_dir=tmp_path / "out", trainers=trainers,
        recipes={m: f"recipe of {m}" for m in trainers}, schedules={m: None for m in trainers},
        patients_from="synthetic", leakage_check={"rule": "r", "allow_test_overlap": False, "checkpoints": []},
        pretrained=tmp_path / "foundation.pth", test_images=tmp_path / "ti", test_labels=tmp_path / "tl",
        dataset_json={"channel_names": {"0": "CT"}}, cv_cases={c: p for c, p in C2P.items() if c not in TEST},
        device="cpu", **kw)


def test_design_record_keeps_the_design_file_layout(tmp_path):
    d = _design(tmp_path, seeds=2)
    assert list(d.to_dict()) == DESIGN_KEYS  # the step fields stay out of the design proper
    assert d.methods == ["pretrained", "scratch"]
    rec = d.record()
    assert list(rec) == [*DESIGN_KEYS, "patients_from", "replicates", "methods", "leakage_check",
                         "late_fusion_checkpoint"]
    assert [r["seed"] for r in rec["replicates"]] == [3, 1003]
    assert rec["methods"]["scratch"] == {"trainer": "nnUNetTrainerPETCTScratch_tiny", "recipe": "recipe of scratch",
                                         "schedule": None}
    assert rec["late_fusion_checkpoint"] is None
    rec["subsets"][0]["train"].append("x")  # a copy: the design is not changed through its record
    assert "x" not in d.subsets[0].train
    json.dumps(rec)  # serialisable as is


def test_make_folds_writes_splits_and_design_and_is_idempotent(tmp_path):
    from nnunetv2_petct.nnunet.label_efficiency import DESIGN_FILE, make_folds

    (tmp_path / "pre").mkdir()
    d = make_folds(_design(tmp_path, seeds=2))
    splits = json.loads(Path(d.splits_file).read_text())
    # a 5-fold CV of the 7 non-test patients first (frac1 may equal one of its folds), then our subsets
    assert all(len(f["val"]) >= 1 for f in splits[:5]) and 5 <= len(splits) <= 5 + 4
    for s in d.subsets:
        assert sorted(splits[s.fold]["train"]) == s.train and splits[s.fold]["val"] == d.val
    by_name = {s.run_name: s.fold for s in d.subsets}
    assert len(set(by_name.values())) == 4  # identical frac1 subsets of two replicates: separate folds
    assert json.loads((d.out_dir / DESIGN_FILE).read_text()) == json.loads(json.dumps(d.record()))
    assert not (d.out_dir / "test_images").exists()  # external test set: no test folders
    before = Path(d.splits_file).read_text()
    again = make_folds(_design(tmp_path, seeds=2))
    assert [s.fold for s in again.subsets] == [s.fold for s in d.subsets]
    assert Path(d.splits_file).read_text() == before


def test_plan_runs_and_commands(tmp_path, monkeypatch):
    from nnunetv2_petct.nnunet.label_efficiency import make_folds, plan_runs, write_commands

    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    (tmp_path / "pre").mkdir()
    d = make_folds(_design(tmp_path, disable_tta=True, npp=0))
    runs = plan_runs(d)
    assert [(r.subset.name, r.method) for r in runs] == [("frac0.5", "pretrained"), ("frac0.5", "scratch"),
                                                         ("frac1", "pretrained"), ("frac1", "scratch")]
    r = runs[0]
    assert r.train_cmd[:4] == ["nnUNetv2_train", d.dataset_name, "3d_fullres", str(r.subset.fold)]
    assert r.train_cmd[-2:] == ["-pretrained_weights", str(d.pretrained)]
    assert "-pretrained_weights" not in runs[1].train_cmd
    assert r.train_env == {"NNUNETV2_PETCT_SEED": "3"}
    assert r.predict_cmd[r.predict_cmd.index("-i") + 1] == str(d.test_images)
    assert r.predict_cmd[-3:] == ["--disable_tta", "-npp", "0"] and "-nps" not in r.predict_cmd
    assert r.pred_dir == d.out_dir / "predictions" / "pretrained" / "frac0.5"
    assert r.fold_dir == (tmp_path / "results" / d.dataset_name
                          / f"nnUNetTrainerPETCTFinetune_tiny__nnUNetPlans__3d_fullres/fold_{r.subset.fold}")
    script = write_commands(d, runs)
    assert (d.out_dir / "commands.sh").read_text() == "\n".join(script) + "\n"
    assert sum(" nnUNetv2_train " in x for x in script) == 4 and sum(x.startswith("nnUNetv2_predict ") for x in
                                                                       script) == 4


def _nifti(arr: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr.astype(np.uint8)), str(path))


def test_a_predictor_with_variants_is_evaluated_and_tabulated_per_variant(tmp_path, monkeypatch):
    """The predict/evaluate seam: a caller's predictor returns several variants of each run (here: the "clicks"
    shape, a second prediction better than the first); each is scored by the unchanged evaluate step into rows
    that carry its extra column; a trained run is not trained again."""
    from nnunetv2_petct.nnunet import label_efficiency as le

    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    (tmp_path / "pre").mkdir()
    d = le.make_folds(_design(tmp_path, trainers={"scratch": "nnUNetTrainerPETCTScratch_tiny"}))
    truth = np.zeros((4, 6, 6))
    truth[1:3, 1:4, 1:4] = 1
    _nifti(truth, d.test_labels / "c7.nii.gz")
    runs = le.plan_runs(d)
    for r in runs:  # "trained": execute_runs must not start nnUNetv2_train
        r.fold_dir.mkdir(parents=True)
        (r.fold_dir / "checkpoint_final.pth").write_bytes(b"")
    monkeypatch.setattr(le, "_run_logged", lambda *a, **k: pytest.fail(f"started a subprocess: {a[0]}"))

    def clicks_predictor(design, run):
        out = []
        for k in (0, 1):
            pred = truth.copy()
            if k == 0:
                pred[1:3, 1:4, 3] = 0  # one click recovers the missed slab
            _nifti(pred, run.pred_dir / f"clicks{k}" / "c7.nii.gz")
            out.append(le.Prediction(run, run.pred_dir / f"clicks{k}", run.eval_dir / f"clicks{k}", {"clicks": k}))
        return out

    run_rows, case_rows = le.execute_runs(d, runs, quiet=True, predictor=clicks_predictor)
    assert [(r["subset"], r["clicks"]) for r in run_rows] == [("frac0.5", 0), ("frac0.5", 1), ("frac1", 0),
                                                              ("frac1", 1)]
    assert run_rows[0]["dice"] == pytest.approx(2 * 12 / (12 + 18)) and run_rows[1]["dice"] == pytest.approx(1.0)
    assert [(r["case"], r["clicks"]) for r in case_rows][:2] == [("c7", 0), ("c7", 1)]
    assert (d.out_dir / "evaluation" / "scratch" / "frac1" / "clicks1").is_dir()

    # tabulate: the standard files from the standard columns; the design record in the report
    plain = [r for r in run_rows if r["clicks"] == 1]
    paths = le.tabulate(d, plain, [r for r in case_rows if r["clicks"] == 1], n_resamples=100)
    rows = list(csv.DictReader(paths["runs"].open()))
    assert tuple(rows[0]) == le.RUN_COLUMNS and [r["subset"] for r in rows] == ["frac0.5", "frac1"]
    md = paths["md"].read_text()
    assert "Dataset Dataset999_Synthetic" in md and "recipe of scratch" in md
    assert "No foundation checkpoint used" in md


@pytest.mark.slow
def test_bad_fractions_are_refused_before_anything_is_written(tiny_dataset, tmp_path):
    """Validation first, writing later: an in-dataset test set with ``--fractions 0 1.5`` exits 2 and leaves
    no test folders, design or splits (the real console script)."""
    d = tiny_dataset
    splits = Path(d.env["nnUNet_preprocessed"]) / d.dataset_name / "splits_final.json"
    before = splits.read_text() if splits.is_file() else None
    out = tmp_path / "o"
    proc = run([cli("nnUNetv2_petct_label_efficiency"), "-d", str(d.dataset_id), "--methods", "scratch",
                "--trainer-suffix", "_tiny", "--fractions", "0", "1.5", "-device", "cpu", "--dry-run", "-o", str(out)],
               d.env, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "fractions must be in (0, 1]" in proc.stderr
    assert not out.exists()  # no test_images/test_labels, no design, no commands.sh
    assert (splits.read_text() if splits.is_file() else None) == before
