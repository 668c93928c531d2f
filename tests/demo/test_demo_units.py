"""The demo's pieces without a pipeline run: shell quoting of recorded commands, live progress of
subprocesses, the report's metrics and comparison sentence, the training-curve figure."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from nnunetv2_petct.demo.config import PROFILES, Demo, shell_word
from nnunetv2_petct.demo.figures import first_iteration_above, iterations_axis, plot_pseudo_dice_curves
from nnunetv2_petct.demo.live import Job, StatusPrinter, format_seconds, parse_progress, run_jobs
from nnunetv2_petct.demo.report import (
    commands_script,
    comparison_sentence,
    method_metrics,
    paired_rows,
    what_decides_the_numbers,
)
from nnunetv2_petct.demo.steps import training_commands, training_fold_dir

PNG = b"\x89PNG\r\n\x1a\n"


def test_shell_word_expands_only_the_demo_folder(tmp_path):
    out = Path("/data/my demo")
    assert shell_word("/data/my demo/downloads/autopet", out) == '"$DEMO/downloads/autopet"'
    assert shell_word("/data/my demo", out) == '"$DEMO"'
    assert shell_word("/data/my demo_2/x", out) == '"${DEMO}_2/x"'  # a name character follows: braces
    assert shell_word("plain", out) == "plain"
    assert shell_word("with space", out) == "'with space'"
    # other shell-active characters inside a word with the folder are escaped, not expanded
    assert shell_word('/data/my demo/$HOME/"q"`x`', out) == '"$DEMO/\\$HOME/\\"q\\"\\`x\\`"'
    # and bash reads the words back as the original arguments with DEMO set
    demo = Demo(out=out, profile=PROFILES["test"], device="cpu")
    args = ["printf", "%s\\n", "/data/my demo/a b", "/data/my demo_2", "$HOME", "/data/my demo/`x`"]
    line = demo.shown(args)
    proc = subprocess.run(["bash", "-c", line], env={"DEMO": str(out), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines() == ["/data/my demo/a b", "/data/my demo_2", "$HOME", "/data/my demo/`x`"]


def test_commands_script_runs_with_demo_set(tmp_path):
    demo = Demo(out=tmp_path / "orig", profile=PROFILES["test"], device="cpu")
    demo.commands = [demo.shown(["mkdir", "-p", str(demo.out / "sub dir")]),
                     demo.shown(["touch", str(demo.out / "sub dir" / "file.txt")])]
    script = tmp_path / "commands.sh"
    script.write_text(commands_script(demo.commands))
    fresh = tmp_path / "fresh"
    subprocess.run(["bash", str(script)], env={"DEMO": str(fresh), "PATH": "/usr/bin:/bin"}, check=True)
    assert (fresh / "sub dir" / "file.txt").is_file()
    assert not (tmp_path / "orig").exists()
    # without DEMO the script refuses to run
    proc = subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert proc.returncode != 0 and "DEMO" in proc.stderr


def test_parse_progress_of_nnunet_lines():
    assert parse_progress("2026-11-30 06:10:32.180358: Epoch 12\n") == (12, None)
    assert parse_progress("2026-11-30 06:10:32.180358: Pseudo dice [np.float32(0.2228)]") == \
        (None, "pseudo-Dice 0.22")
    # two classes: their mean
    assert parse_progress("x: Pseudo dice [np.float32(0.5), np.float32(0.25)]")[1] == "pseudo-Dice 0.38"
    assert parse_progress("x: masked R2 vs zero imputation {'CT': 0.8791, 'PET': 0.7932}")[1] == \
        "masked R² CT 0.88, PET 0.79"
    assert parse_progress("2026-11-30 06:10:32: Epoch time: 9.12 s") == (None, None)
    assert parse_progress("Current learning rate: 0.01") == (None, None)


def test_format_seconds():
    assert format_seconds(42.4) == "42 s"
    assert format_seconds(185) == "3 min 05 s"
    assert format_seconds(3720) == "1 h 02 min"


def _fake_training(epochs: int, code: int = 0) -> list[str]:
    body = "".join(f"print('2026-01-01 00:00:00.0: Epoch {e}'); print('2026-01-01 00:00:00.0: Pseudo dice "
                   f"[np.float32({e / 10})]'); " for e in range(epochs))
    return [sys.executable, "-c", body + f"import sys; sys.exit({code})"]


def test_run_jobs_side_by_side_with_progress_and_logs(tmp_path):
    jobs = [Job(_fake_training(3), "pretrained", tmp_path / "a.log", 3),
            Job(_fake_training(2), "scratch", tmp_path / "b.log", 2),
            Job([sys.executable, "-c", "print('hello')"], "other", tmp_path / "c.log")]
    stream = io.StringIO()
    done = run_jobs(jobs, max_parallel=2, status=StatusPrinter("> ", stream=stream, every_s=1e9))
    assert [j.returncode for j in done] == [0, 0, 0]
    assert (jobs[0].epoch, jobs[1].epoch) == (2, 1)  # the last epoch index seen
    assert jobs[0].metric == "pseudo-Dice 0.20"
    assert "Epoch 2" in (tmp_path / "a.log").read_text() and "hello" in (tmp_path / "c.log").read_text()
    text = stream.getvalue()
    # not a terminal: one line per finished run (and quarter-epoch lines), no carriage returns
    assert "\r" not in text
    for label in ("pretrained: done", "scratch: done", "other: done"):
        assert label in text


def test_run_jobs_stops_after_a_failure(tmp_path):
    jobs = [Job(_fake_training(1, code=3), "bad", tmp_path / "a.log", 1),
            Job(_fake_training(1), "never", tmp_path / "b.log", 1)]
    run_jobs(jobs, max_parallel=1)
    assert jobs[0].returncode == 3 and jobs[1].returncode is None and not jobs[1].started


def test_training_commands_keep_environment_words(tmp_path):
    script = tmp_path / "commands.sh"
    script.write_text("#!/usr/bin/env bash\n# 1) training\nnnUNetv2_train D 3d_fullres 5 -tr T -p P\n"
                      "NNUNETV2_PETCT_SEED=1 nnUNetv2_train D 3d_fullres 6 -tr T2 -p P\n"
                      "nnUNetv2_predict -i x -o y\n# nnUNetv2_train commented\n")
    assert training_commands(script) == [
        ["nnUNetv2_train", "D", "3d_fullres", "5", "-tr", "T", "-p", "P"],
        ["NNUNETV2_PETCT_SEED=1", "nnUNetv2_train", "D", "3d_fullres", "6", "-tr", "T2", "-p", "P"]]


def test_method_metrics_keep_n_next_to_every_number(tmp_path):
    d = tmp_path / "eval"
    d.mkdir()
    (d / "per_case.csv").write_text(
        "case,dice,fpv_ml,fnv_ml,n_gt_lesions,n_gt_detected,n_fp_lesions,gt_tmtv_ml,pred_tmtv_ml\n"
        "a,0.8,0.0,1.0,2,2,0,10.0,9.0\n"
        "b,0.4,2.0,3.0,1,0,1,5.0,6.0\n"
        "c,nan,4.0,nan,0,0,2,0.0,4.0\n")
    m = method_metrics(d)
    assert m["dice"] == pytest.approx(0.6) and m["n_dice"] == 2          # lesion-positive cases only
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["n_lesions"] == 3  # pooled over lesions
    assert m["fpv_free_ml"] == pytest.approx(4.0) and m["n_free"] == 1
    assert m["fpv_ml"] == pytest.approx(2.0) and m["n_cases"] == 3
    assert m["fnv_ml"] == pytest.approx(2.0) and m["n_fnv"] == 2
    assert m["fp_lesions"] == pytest.approx(1.0)
    assert m["tmtv_error_ml"] == pytest.approx((1 + 1 + 4) / 3)


def test_paired_rows_read_the_runners_comparisons(tmp_path):
    (tmp_path / "label_efficiency_paired.csv").write_text(
        "claim,metric,method_a,subset_a,method_b,subset_b,n_cases,mean_a,mean_b,mean_diff,ci_low,ci_high,"
        "confidence,p_wilcoxon,n_resamples\n"
        ",dice,pretrained,shots10,scratch,shots10,9,0.5,0.45,0.05,-0.02,0.12,0.95,0.31,10000\n"
        ",fpv_ml,pretrained,shots10,scratch,shots10,12,1,2,-1,-2,0,0.95,0.2,10000\n"
        ",dice,pretrained,frac0.5,scratch,frac0.5,9,0.5,0.1,0.4,0.3,0.5,0.95,0.01,10000\n")
    rows = paired_rows(tmp_path, "shots10")
    assert list(rows) == [("pretrained", "scratch")]  # Dice only, this subset only
    assert rows[("pretrained", "scratch")] == {"mean_diff": 0.05, "ci_low": -0.02, "ci_high": 0.12,
                                               "p_wilcoxon": 0.31, "n": 9}
    assert "Within noise" in comparison_sentence("a", "b", rows[("pretrained", "scratch")])
    assert paired_rows(tmp_path / "missing", "shots10") == {}


def test_comparison_sentence_says_within_noise_when_the_interval_holds_zero():
    cmp = {"n": 9, "mean_diff": 0.03, "ci_low": -0.05, "ci_high": 0.11, "p_wilcoxon": 0.43}
    text = comparison_sentence("fine-tuned", "scratch", cmp)
    assert "+0.030" in text and "-0.050 to +0.110" in text and "n = 9" in text and "Within noise" in text
    text = comparison_sentence("fine-tuned", "scratch", dict(cmp, mean_diff=-0.2, ci_low=-0.3, ci_high=-0.1))
    assert "excludes 0" in text and "scratch is better" in text
    assert "no paired comparison" in comparison_sentence("a", "b", None)


def test_pseudo_dice_figure_and_axis(tmp_path):
    its = iterations_axis(4, 25)
    assert its == [25, 50, 75, 100]
    assert first_iteration_above(its, [0.0, 0.05, 0.2, 0.3], 0.1) == 75
    assert first_iteration_above(its, [0.0] * 4, 0.1) is None
    out = plot_pseudo_dice_curves({"fine-tuned": {"method": "pretrained", "iterations": its,
                                                  "mean_fg_dice": [0, 0.1, 0.3, 0.4], "ema_fg_dice": [0, .01, .04, .08]},
                                   "scratch": {"iterations": its, "mean_fg_dice": [0.1, 0, 0, 0.2],
                                               "ema_fg_dice": [0.01, 0.009, 0.008, 0.03]}},
                                  tmp_path / "curves.png")
    assert out.read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match="curve"):
        plot_pseudo_dice_curves({"x": {"iterations": [1, 2], "mean_fg_dice": [0], "ema_fg_dice": [0]}}, tmp_path / "x.png")


def test_training_fold_dir_follows_nnunets_naming(tmp_path):
    demo = Demo(out=tmp_path, profile=PROFILES["test"], device="cpu")
    (demo.preprocessed / "Dataset901_AutoPETDemo").mkdir(parents=True)
    words = ["NNUNETV2_PETCT_SEED=1", "nnUNetv2_train", "Dataset901_AutoPETDemo", "3d_fullres", "6", "-tr",
             "nnUNetTrainerPETCTScratch_demo", "-p", "nnUNetPlans", "-device", "cpu"]
    expected = tmp_path / "nnUNet_results" / "Dataset901_AutoPETDemo" / \
        "nnUNetTrainerPETCTScratch_demo__nnUNetPlans__3d_fullres" / "fold_6"
    assert training_fold_dir(demo, words) == expected
    # a dataset id resolves to the preprocessed folder's name
    assert training_fold_dir(demo, ["nnUNetv2_train", "901", "3d_fullres", "6", "-tr",
                                    "nnUNetTrainerPETCTScratch_demo"]) == expected


def test_report_says_where_the_numbers_repeat(tmp_path, monkeypatch):
    """Issue 21 item 4: the report names what decides a seeded run's numbers (CPU, torch, threads)."""
    import platform

    import torch

    from nnunetv2_petct.io import cpu_model, machine_facts

    facts = machine_facts()
    assert facts["torch"] == torch.__version__ and facts["torch_threads"] == torch.get_num_threads()
    assert facts["logical_cores"] == __import__("os").cpu_count() and facts["cpu_model"] == cpu_model()
    if platform.system() == "Linux":
        assert facts["cpu_model"]  # /proc/cpuinfo names it
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    one = "\n".join(what_decides_the_numbers(Demo(out=tmp_path, profile=PROFILES["test"], device="cpu")))
    assert "on the same machine" in one and f"torch `{torch.__version__}`" in one
    assert f"CPU `{facts['cpu_model'] or 'unknown'}` ({facts['logical_cores']} logical cores)" in one
    assert f"training threads: torch's default ({facts['logical_cores']} logical cores)" in one
    two = "\n".join(what_decides_the_numbers(Demo(out=tmp_path, profile=PROFILES["test"], device="cpu", jobs=2)))
    assert "training threads: OMP_NUM_THREADS=1 per run, 2 runs at a time" in two
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    three = "\n".join(what_decides_the_numbers(Demo(out=tmp_path, profile=PROFILES["test"], device="cpu")))
    assert "training threads: OMP_NUM_THREADS=3" in three
