"""Channel-name checks (nnunetv2_petct.conversion.channels): _0000 = CT, _0001 = PET."""

import pytest


@pytest.mark.parametrize("bad", [{"0": "PET", "1": "CT"}, {"0": "CT"}, {"0": "CT", "1": "MR"}])
def test_channel_check_rejects_wrong_order_or_count(bad):
    from nnunetv2_petct.conversion.channels import ChannelOrderError, check_channels

    with pytest.raises(ChannelOrderError, match="_0000 = CT"):
        check_channels(bad)


def test_channel_check_accepts_usual_names():
    from nnunetv2_petct.conversion.channels import channel_kind, check_channels

    check_channels({"0": "CT", "1": "PET"})
    check_channels({"0": "ct_hu", "1": "SUV"})
    check_channels({"0": "PET"}, expected=("PET",))
    assert [channel_kind(n) for n in ("CT", "PT", "pet_suv", "noNorm")] == ["CT", "PET", "PET", "unknown"]


def test_channel_check_accepts_pet_named_ct_only_when_recorded_as_global():
    from nnunetv2_petct.conversion.channels import ChannelOrderError, check_channels, pet_normalized_globally

    names = {"0": "CT", "1": "ct"}  # what `nnUNetv2_petct_convert --pet-normalization global` writes
    with pytest.raises(ChannelOrderError):
        check_channels(names)
    dataset_json = {"channel_names": names, "petct_normalization": {"ct": "global", "pet": "global"}}
    assert pet_normalized_globally(dataset_json)
    check_channels(names, pet_global=pet_normalized_globally(dataset_json))
    with pytest.raises(ChannelOrderError):  # CT must still come first
        check_channels({"0": "PET", "1": "ct"}, pet_global=True)


def test_normalization_choice_names():
    from nnunetv2_petct.conversion.channels import NORMALIZATION_SCHEMES, normalization_choice

    assert normalization_choice(["CTNormalization", "ZScoreNormalization"]) == "nnunet"
    assert normalization_choice(("ZScoreNormalization", "ZScoreNormalization")) == "zscore-both"
    assert normalization_choice(["CTNormalization", "CTNormalization"]) == "pet-global"
    assert normalization_choice(["ZScoreNormalization", "CTNormalization"]) is None
    assert set(NORMALIZATION_SCHEMES) == {"nnunet", "pet-global", "zscore-both"}
