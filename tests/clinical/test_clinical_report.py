"""The study lesion table (hand-computed cubes), speck removal, and the self-contained HTML report."""

from __future__ import annotations

import base64
import io
import math
from html.parser import HTMLParser

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_petct.evaluation.html_report import RESEARCH_USE_LINE, render_study_report_html
from nnunetv2_petct.evaluation.lesion_report import (
    LESION_CSV_COLUMNS,
    csv_text,
    lesion_csv_row,
    lesion_report,
)
from nnunetv2_petct.evaluation.plots import pet_mip_png

SPACING_XYZ = (2.0, 2.0, 3.0)
ORIGIN_XYZ = (-10.0, 20.0, 100.0)
VOX_ML = 2.0 * 2.0 * 3.0 / 1000.0


def _images():
    """Background SUV 1; cube A (z 4-6, y 5-7, x 5-7) SUV 4 with centre 9; cube C (z 4-6, y 12-14, x 12-14) SUV 5;
    speck B: 2 voxels of SUV 12 at z 9, y 15, x 15-16."""
    suv = np.ones((12, 20, 20), np.float32)
    mask = np.zeros(suv.shape, np.uint8)
    suv[4:7, 5:8, 5:8] = 4.0
    suv[5, 6, 6] = 9.0
    mask[4:7, 5:8, 5:8] = 1
    suv[4:7, 12:15, 12:15] = 5.0
    mask[4:7, 12:15, 12:15] = 1
    suv[9, 15, 15:17] = 12.0
    mask[9, 15, 15:17] = 1
    imgs = []
    for a in (mask, suv):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing(SPACING_XYZ)
        img.SetOrigin(ORIGIN_XYZ)
        imgs.append(img)
    return imgs[0], imgs[1], suv


def _peak_by_hand(suv: np.ndarray, z: int, y: int, x: int) -> float:
    # 1 ml sphere: radius (3000 / (4 pi))^(1/3) = 6.2035 mm; spacing (z, y, x) = (3, 2, 2) mm
    r2 = (3000.0 / (4.0 * math.pi)) ** (2.0 / 3.0)
    vals = [suv[z + a, y + b, x + c] for a in range(-2, 3) for b in range(-3, 4) for c in range(-3, 4)
            if (3 * a) ** 2 + (2 * b) ** 2 + (2 * c) ** 2 <= r2]
    return float(np.mean(vals))


def test_lesion_table_by_hand_with_speck_removal():
    mask, suv_img, suv = _images()
    rep = lesion_report(mask, suv_img, min_volume_ml=0.1)
    assert rep.removed == {"min_volume_ml": 0.1, "count": 1, "volume_ml": pytest.approx(2 * VOX_ML)}
    assert [d["lesion_id"] for d in rep.lesions] == [1, 2]
    a, c = rep.lesions
    assert a["suv_max"] == pytest.approx(9.0) and c["suv_max"] == pytest.approx(5.0)
    assert a["n_voxels"] == 27 and a["volume_ml"] == pytest.approx(27 * VOX_ML)
    assert a["suv_mean"] == pytest.approx((26 * 4 + 9) / 27)
    assert a["tlg"] == pytest.approx((26 * 4 + 9) / 27 * 27 * VOX_ML)
    assert a["suv_peak"] == pytest.approx(_peak_by_hand(suv, 5, 6, 6))
    # centroid = centre voxel (z 5, y 6, x 6) -> patient (x, y, z) = origin + index * spacing
    assert a["centroid_mm"] == pytest.approx([-10 + 6 * 2, 20 + 6 * 2, 100 + 5 * 3])
    assert c["centroid_mm"] == pytest.approx([-10 + 13 * 2, 20 + 13 * 2, 100 + 5 * 3])
    assert a["suv_max_position_mm"] == pytest.approx([2.0, 32.0, 115.0])
    assert rep.totals["lesion_count"] == 2
    assert rep.totals["tmtv_ml"] == pytest.approx(54 * VOX_ML)
    assert rep.totals["total_tlg"] == pytest.approx(a["tlg"] + c["tlg"])
    kept = sitk.GetArrayFromImage(rep.mask)
    assert kept.sum() == 54 and kept[9].sum() == 0  # the speck is out of the written mask too
    assert rep.mask.GetOrigin() == pytest.approx(ORIGIN_XYZ)


def test_min_volume_zero_keeps_the_speck_and_ranks_by_suvmax():
    mask, suv_img, _ = _images()
    rep = lesion_report(mask, suv_img, min_volume_ml=0.0)
    assert [d["suv_max"] for d in rep.lesions] == pytest.approx([12.0, 9.0, 5.0])
    assert rep.removed["count"] == 0 and rep.totals["lesion_count"] == 3
    rows = [lesion_csv_row(d) for d in rep.lesions]
    text = csv_text(rows, LESION_CSV_COLUMNS)
    lines = text.strip().splitlines()
    assert lines[0].split(",") == list(LESION_CSV_COLUMNS) and len(lines) == 4
    first = dict(zip(LESION_CSV_COLUMNS, lines[1].split(",")))
    assert int(first["lesion_id"]) == 1 and float(first["suv_max"]) == 12.0 and int(first["n_voxels"]) == 2
    assert float(first["centroid_x_mm"]) == pytest.approx(-10 + 15.5 * 2)


def test_mask_off_the_pet_grid_is_refused():
    mask, suv_img, _ = _images()
    mask.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="not on the PET grid"):
        lesion_report(mask, suv_img)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.text: list[str] = []
        self.imgs: list[dict] = []
        self.rows: list[list[str]] = []
        self.urls: list[str] = []
        self.ids: dict[str, str] = {}
        self._row: list[str] | None = None
        self._cell = False
        self._in_lesions = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("src", "href"):
            if k in a:
                self.urls.append(a[k])
        if "id" in a:
            self.ids[a["id"]] = tag
        if tag == "img":
            self.imgs.append(a)
        if tag == "table" and a.get("id") == "lesions":
            self._in_lesions = True
        if self._in_lesions and tag == "tr":
            self._row = []
        if self._row is not None and tag in ("td", "th"):
            self._cell = True
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_lesions = False
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        if tag in ("td", "th"):
            self._cell = False

    def handle_data(self, data):
        self.text.append(data)
        if self._cell and self._row is not None:
            self._row[-1] += data


def _report_record(rep, anonymized=False):
    study = {"name": "P1_20200101", "anonymized": anonymized, "source_format": "DICOM"}
    if not anonymized:
        study.update(patient_id="P1", patient_name="Doe^Jane", study_date="20200101")
    return {"study": study, "totals": rep.totals, "lesions": rep.lesions, "removed_small": rep.removed,
            "settings": {"min_volume_ml": 0.1}, "suv": {"description": "SUVbw", "factor": 0.000340667},
            "model": {"trainer": "nnUNetTrainerPETCTFinetune", "folds": ["0", "1"]},
            "software": {"nnunetv2": "2.8.1"}, "warnings": [], "generated": "2026-01-01T00:00:00+00:00",
            "ct_coverage": {"axial": {"fraction": 0.6, "uncovered": [
                {"end": "inferior", "from_mm": -500.0, "to_mm": -300.0, "length_mm": 200.0, "fraction": 0.4,
                 "slices": [0, 49]}]}}}


def test_html_report_is_self_contained_and_shows_the_table(tmp_path):
    mask, suv_img, suv = _images()
    rep = lesion_report(mask, suv_img, min_volume_ml=0.0)
    pngs = [(f"{v} MIP", pet_mip_png(suv, sitk.GetArrayFromImage(rep.mask), (3.0, 2.0, 2.0), v,
                                     labels=[((5, 6, 6), "2")])) for v in ("coronal", "sagittal")]
    page = render_study_report_html(_report_record(rep), pngs)
    p = _Page()
    p.feed(page)
    text = " ".join(" ".join(p.text).split())
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert RESEARCH_USE_LINE in text and p.ids.get("research-use") == "p"
    assert "Doe^Jane" in text and "P1" in text
    # no network: every src/href is an inline data URI
    assert p.urls and all(u.startswith("data:image/png;base64,") for u in p.urls)
    from PIL import Image

    assert len(p.imgs) == 2
    for img in p.imgs:
        data = base64.b64decode(img["src"].split(",", 1)[1])
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(data)) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    # header + one row per lesion, in SUVmax order
    assert p.rows[0][:2] == ["#", "SUVmax"] and len(p.rows) == 1 + 3
    assert [r[0] for r in p.rows[1:]] == ["1", "2", "3"]
    assert [float(r[1]) for r in p.rows[1:]] == [12.0, 9.0, 5.0]
    assert "TMTV" in text and f"{rep.totals['tmtv_ml']:.2f} ml" in text
    # the partial CT coverage is stated with its range
    assert "No CT at the inferior (feet) end: z -500.0 to -300.0 mm" in text and "40.0 %" in text
    assert "no-lesion" not in p.ids


def test_html_report_anonymized_and_empty():
    mask, suv_img, _ = _images()
    empty = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(mask)
    rep = lesion_report(empty, suv_img)
    page = render_study_report_html(_report_record(rep, anonymized=True))
    p = _Page()
    p.feed(page)
    text = " ".join(" ".join(p.text).split())
    assert "Doe^Jane" not in page and "omitted (--anonymize)" in text
    assert p.ids.get("no-lesion") == "p" and "No lesion found." in text
    assert RESEARCH_USE_LINE in text and "lesions" not in p.ids
