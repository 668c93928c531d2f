"""``nnUNetv2_petct_adapt_checkpoint``: change the input channels of a foundation checkpoint, or check one.

Thin layer over :mod:`nnunetv2_petct.transfer.weights` (the surgery) and
:func:`nnunetv2_petct.nnunet.trainers.finetune.network_from_plans` (the target network for ``--check``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EPILOG = """\
modes
  1) one channel from a 2-channel (CT, PET) checkpoint, for a CT-only or PET-only target dataset:
       nnUNetv2_petct_adapt_checkpoint foundation_final.pth --keep PET -o foundation_PET.pth
     Rule: the input projection (first convolution, every alias of it in the state dict) keeps only the
     kept channel's slice of its weights (w[:, k]); every other tensor is unchanged.
  2) ONLY TO INITIALISE FINE-TUNING: one 2-channel checkpoint from two single-channel
     ("separated-modality") checkpoints:
       nnUNetv2_petct_adapt_checkpoint --ct foundation_CT.pth --pet foundation_PET.pth --rule first \
           -o foundation_merged.pth
     Rule, "first-conv only": the two input projections are combined (channel 0 = CT filters of the CT
     network, channel 1 = PET filters of the PET network); every other tensor comes from ONE source
     network, chosen with --rule (required): first = the CT network, second = the PET network. The other
     modality enters features that were never trained on it; fine-tuning is expected to adapt.
     There is no averaging rule: two independently trained networks are not aligned unit by unit, so an
     average computes neither model's features. Do not linear-probe a merged checkpoint. To evaluate
     separated-modality pretraining by probing, keep the networks intact with the late-fusion probe:
       nnUNetv2_petct_late_fusion_checkpoint --ct foundation_CT.pth --pet foundation_PET.pth -o late_fusion.pth
       nnUNetv2_train ... -tr nnUNetTrainerPETCTLateFusionProbe -pretrained_weights late_fusion.pth
  4) --import-trusted: turn a legacy checkpoint that needs unsafe unpickling (Python objects, numpy values,
     a bare state dict) into a weights-only one. The input is loaded with torch.load(weights_only=False),
     which RUNS CODE stored in the file: only for files whose origin you trust.
       nnUNetv2_petct_adapt_checkpoint old_model.pth --import-trusted -o old_model_safe.pth
     Every input is otherwise read with weights_only=True; a file that needs more is refused with this hint.
  3) --check TARGET: would nnUNetv2_train -pretrained_weights accept the checkpoint for TARGET (a plans
     file, a trained-model folder, or a preprocessed dataset folder)? Lists the differing tensors and the
     fix (adapt the channels, or transfer the plans with nnUNetv2_move_plans_between_datasets).
     With -o, the adapted checkpoint is checked.

The output loads with stock `nnUNetv2_train ... -pretrained_weights OUT`; its nnssl_adaptation_plan says
pretrain_num_input_channels = the new count and petct_metadata["adaptations"] records what was done.
Output layers (.seg_layers., never transferred by nnU-Net) are kept as they are.

exit codes: 0 done / compatible, 1 incompatible (--check), 2 bad input.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_petct_adapt_checkpoint",
        description="Adapt the input channels of an nnU-Net foundation checkpoint (2 -> 1 channel, or two "
        "single-channel checkpoints -> 2 channels to initialise fine-tuning), or check a checkpoint against a "
        "target network.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", nargs="?", help="input checkpoint (foundation_final.pth) for --keep / --check")
    p.add_argument("--keep", nargs="+", metavar="CHANNEL",
                   help="channel(s) to keep, by name (CT, PET) or index (0, 1)")
    p.add_argument("--ct", metavar="CKPT", help="single-channel CT checkpoint (merge mode)")
    p.add_argument("--pet", metavar="CKPT", help="single-channel PET checkpoint (merge mode)")
    p.add_argument("--rule", choices=("first", "second"), default=None,
                   help="merge mode, required: every tensor except the input projection comes from the first "
                   "(CT) or second (PET) network (first-conv only merge, for fine-tuning initialisation)")
    p.add_argument("-o", "--output", help="output checkpoint (.pth)")
    p.add_argument("--import-trusted", action="store_true",
                   help="convert a TRUSTED legacy checkpoint (loaded with weights_only=False: code in it runs) "
                        "into a weights-only file (-o)")
    p.add_argument("--check", metavar="PLANS_OR_MODEL_DIR",
                   help="check against a plans file, a trained-model folder or a preprocessed dataset folder")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier for a preprocessed folder")
    p.add_argument("-c", "--configuration", default=None, help="configuration (default: from the folder name, "
                   "else 3d_fullres)")
    p.add_argument("--num-input-channels", type=int, default=None,
                   help="input channels of the target network when the target has no dataset.json")
    p.add_argument("-f", "--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(message)s")
    from nnunetv2_petct.transfer import weights as W

    merge = a.ct is not None or a.pet is not None
    if merge and (a.ct is None or a.pet is None):
        return _err("merge mode needs both --ct and --pet")
    if merge and (a.keep or a.checkpoint):
        return _err("give either a checkpoint (with --keep/--check) or --ct/--pet, not both")
    if merge and a.rule is None:
        return _err("merge mode needs --rule first (CT network) or --rule second (PET network); the merge is a "
                    "fine-tuning initialisation only (to probe separated models use nnUNetv2_petct_late_fusion_checkpoint)")
    if a.rule is not None and not merge:
        return _err("--rule only applies to merge mode (--ct/--pet)")
    if not merge and not a.checkpoint:
        return _err("no checkpoint given (see --help)")
    if a.import_trusted and (merge or a.keep):
        return _err("--import-trusted converts one checkpoint; adapt the result in a second call")
    if not merge and not a.keep and not a.check and not a.import_trusted:
        return _err("nothing to do: give --keep CHANNEL, --ct/--pet, --import-trusted or --check TARGET")
    if (a.keep or merge or a.import_trusted) and not a.output:
        return _err("-o OUTPUT is required to write the adapted checkpoint")
    if a.output and Path(a.output).exists() and not a.force:
        return _err(f"{a.output} exists (use -f to overwrite)")

    try:
        if merge:
            sources = [W.load_checkpoint(a.ct), W.load_checkpoint(a.pet)]
            for ck, path in zip(sources, (a.ct, a.pet)):
                ck.setdefault("petct_metadata", {})
                if isinstance(ck["petct_metadata"], dict):
                    ck["petct_metadata"]["source_file"] = str(Path(path).resolve())
            result = W.merge_single_channel_checkpoints(sources, rule=a.rule, channel_names=("CT", "PET"))
        elif a.import_trusted:
            result = W.import_trusted_checkpoint(a.checkpoint)
        else:
            result = W.load_checkpoint(a.checkpoint)
            if a.keep:
                result = W.select_input_channels(result, a.keep)
                result["petct_metadata"]["adaptations"][-1]["source_file"] = str(Path(a.checkpoint).resolve())
    except (FileNotFoundError, W.IncompatibleCheckpointError, ValueError) as e:
        return _err(str(e))

    if a.output and a.import_trusted:
        W.save_checkpoint(result, a.output)
        W.load_checkpoint(a.output)  # proof: the written file loads with weights_only=True
        if not a.quiet:
            print(f"wrote {a.output} (weights-only; {len(result['network_weights'])} tensors imported from "
                  f"{a.checkpoint})")
    if a.output and (a.keep or merge):
        W.save_checkpoint(result, a.output)
        if not a.quiet:
            n = W.input_channel_count(result, (result.get("nnssl_adaptation_plan") or {}).get("keys_to_in_proj"))
            print(f"wrote {a.output} ({n} input channel(s); "
                  f"{result['petct_metadata']['adaptations'][-1]['operation']})")

    if a.check:
        from nnunetv2_petct.nnunet.trainers.finetune import load_check_target, network_from_plans

        try:
            plans, dataset_json, configuration = load_check_target(a.check, a.plans, a.configuration)
            n_in = a.num_input_channels
            if n_in is None and dataset_json is None:
                n_in = W.input_channel_count(result)
                print(f"note: no dataset.json next to {a.check}; assuming {n_in} input channel(s) "
                      "(pass --num-input-channels)", file=sys.stderr)
            net = network_from_plans(plans, configuration, n_in, dataset_json)
        except (FileNotFoundError, ValueError, KeyError) as e:
            return _err(str(e))
        report = W.check_compatibility(result, net)
        print(report.message())
        return 0 if report.ok else 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
