"""The autoPET IV click format: parsing, validation messages naming the click, folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnunetv2_petct.interactive.clicks import (
    ClickFileError,
    Clicks,
    check_clicks_in_image,
    read_click_folder,
    read_clicks,
    write_clicks,
)


def test_round_trip_and_order(tmp_path):
    c = Clicks.from_json({"tumor": [[1, 2, 3], [4.0, 5, 6]], "background": [[7, 8, 9]]})
    assert c.tumor == ((1, 2, 3), (4, 5, 6)) and c.background == ((7, 8, 9),)
    assert c.n_tumor == 2 and c.n_background == 1 and not c.is_empty
    # numpy order is (z, y, x): the reverse of the file's (x, y, z)
    assert c.tumor_zyx().tolist() == [[3, 2, 1], [6, 5, 4]]
    assert c.background_zyx().tolist() == [[9, 8, 7]]
    assert c.first(1) == Clicks(((1, 2, 3),), ((7, 8, 9),))
    assert c.first(0).is_empty
    assert c.add("background", (0, 0, 0)).background == ((7, 8, 9), (0, 0, 0))
    assert c.add("tumor", np.array([1, 1, 1])).n_tumor == 3
    path = write_clicks(tmp_path / "c.json", c)
    assert read_clicks(path) == c
    assert json.loads(path.read_text()) == {"tumor": [[1, 2, 3], [4, 5, 6]], "background": [[7, 8, 9]]}
    assert Clicks.from_json({}) == Clicks() and Clicks().tumor_zyx().shape == (0, 3)


@pytest.mark.parametrize("obj,needle", [
    ({"tumor": [[3.5, 4, 5]]}, "tumor click 1 [3.5, 4, 5]: voxel indices must be non-negative integers"),
    ({"tumor": [[1, 2, 3]], "background": [[1, 2, 3], [-1, 4, 5]]}, "background click 2 [-1, 4, 5]"),
    ({"tumor": [[1, 2]]}, "tumor click 1 [1, 2]: a click is a list of three"),
    ({"tumor": [[True, 2, 3]]}, "tumor click 1"),
    ({"tumor": [["1", 2, 3]]}, "tumor click 1"),
    ({"tumor": [[1, 2, 3]], "lesion": []}, "unknown key(s) 'lesion'"),
    ({"tumor": {"x": 1}}, "'tumor' must be a list"),
    ([[1, 2, 3]], "expected an object"),
])
def test_bad_clicks_are_named(obj, needle):
    with pytest.raises(ClickFileError) as e:
        Clicks.from_json(obj, source="c.json")
    assert needle in str(e.value) and str(e.value).startswith("c.json: ")


def test_file_errors(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"tumor": [[1, 2, 3],')
    with pytest.raises(ClickFileError, match=r"c.json: not valid JSON .* line 1, column"):
        read_clicks(p)
    with pytest.raises(ClickFileError, match="cannot read"):
        read_clicks(tmp_path / "missing.json")
    p.write_text(json.dumps({"tumor": [[0, 0, 0]] * 11}))
    with pytest.raises(ClickFileError, match="11 tumor clicks, at most 10"):
        read_clicks(p, max_per_kind=10)


def test_outside_the_image_names_the_click_and_the_size():
    shape_zyx = (30, 20, 10)  # x size 10, y 20, z 30
    check_clicks_in_image(Clicks(((9, 19, 29),), ((0, 0, 0),)), shape_zyx)  # corners are inside
    with pytest.raises(ClickFileError) as e:
        check_clicks_in_image(Clicks(((9, 19, 29),), ((10, 0, 0),)), shape_zyx, source="s.json")
    assert "background click 1 [10, 0, 0] is outside" in str(e.value) and "[10, 20, 30]" in str(e.value)


def test_folder_needs_one_file_per_case_and_no_stray_file(tmp_path):
    write_clicks(tmp_path / "a.json", Clicks(((1, 2, 3),)))
    write_clicks(tmp_path / "b.json", Clicks())
    got = read_click_folder(tmp_path, ["a", "b"])
    assert got["a"].tumor == ((1, 2, 3),) and got["b"].is_empty
    with pytest.raises(ClickFileError, match=r"no click file for 1 case\(s\): c.json"):
        read_click_folder(tmp_path, ["a", "b", "c"])
    with pytest.raises(ClickFileError, match=r"for no case of the run: b.json"):
        read_click_folder(tmp_path, ["a"])
    with pytest.raises(ClickFileError, match="no such click folder"):
        read_click_folder(tmp_path / "nope", ["a"])


def test_grand_challenge_multiple_points_format(tmp_path):
    """The autoPET IV container's lesion-clicks.json: the same clicks as the plain format, names checked."""
    p = tmp_path / "lesion-clicks.json"
    p.write_text(json.dumps({"version": {"major": 1, "minor": 0}, "type": "Multiple points",
                             "points": [{"point": [109, 103, 353], "name": "tumor"},
                                        {"point": [84, 84, 264], "name": "background"},
                                        {"point": [99, 92, 178], "name": "Tumor"}]}))
    assert read_clicks(p) == Clicks(((109, 103, 353), (99, 92, 178)), ((84, 84, 264),))
    p.write_text(json.dumps({"points": [{"point": [1, 2, 3], "name": "lesion"}]}))
    with pytest.raises(ClickFileError, match="point 1: name 'lesion' is neither"):
        read_clicks(p)
    p.write_text(json.dumps({"points": [{"point": [1, -2, 3], "name": "tumor"}]}))
    with pytest.raises(ClickFileError, match=r"tumor click 1 \[1, -2, 3\]"):
        read_clicks(p)
