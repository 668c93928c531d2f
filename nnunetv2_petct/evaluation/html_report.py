"""A self-contained HTML page for one study's lesion report (no network, no script, images inline).

Pure library (standard library only). :func:`render_study_report_html` turns the study's ``report.json``
record (built by :mod:`nnunetv2_petct.clinical.pipeline`) and PNG images into one HTML string: images are
``data:image/png;base64`` URIs, the style sheet is inline, there are no external references, so the file
opens offline and can be attached to a ticket or archived as it is.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from nnunetv2_petct.io import fmt_number

RESEARCH_USE_LINE = ("Research use only. Not a medical device; not for diagnosis or treatment decisions. "
                     "Automatic segmentation: every finding must be checked by a qualified reader.")

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px; color: #1d1d1f;
       max-width: 1150px; }
h1 { font-size: 22px; margin: 0 0 6px 0; }
h2 { font-size: 17px; margin: 22px 0 8px 0; border-bottom: 1px solid #ddd; padding-bottom: 3px; }
.ruo { background: #fff3cd; border: 2px solid #d39e00; color: #5c4400; padding: 8px 12px; font-weight: 600;
       margin: 10px 0 14px 0; }
.warn { background: #fdecea; border-left: 5px solid #c0392b; padding: 6px 10px; margin: 6px 0; }
.note { color: #555; font-size: 13px; }
table { border-collapse: collapse; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; }
td.l, th.l { text-align: left; }
table.kv td { text-align: left; }
table.kv td:first-child { color: #555; white-space: nowrap; }
.figs { display: flex; gap: 16px; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 0; }
figure img { height: 500px; max-width: 100%; border: 1px solid #ccc; }
figcaption { font-size: 13px; color: #444; text-align: center; }
.big { font-size: 18px; font-weight: 600; }
.none { font-size: 18px; font-weight: 600; color: #1e7e34; }
"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _num(v: Any, digits: int = 2) -> str:
    return _e(fmt_number(v, digits))


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _kv_table(rows: Sequence[tuple[str, Any]], cls: str = "kv") -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows if v not in (None, ""))
    return f'<table class="{cls}">{body}</table>'


def _coverage_text(cov: Mapping) -> list[str]:
    """Sentences for the axial ranges without CT (``cov["axial"]["uncovered"]``)."""
    out = []
    for gap in (cov.get("axial") or {}).get("uncovered", []):
        where = {"whole": "anywhere in the PET", "inferior": "at the inferior (feet) end",
                 "superior": "at the superior (head) end"}.get(gap["end"], f"at the {gap['end']} end")
        out.append(
            f"No CT {where}: z {gap['from_mm']:.1f} to {gap['to_mm']:.1f} mm ({gap['length_mm']:.1f} mm, "
            f"{100 * gap['fraction']:.1f} % of the PET's axial extent"
            + (f", PET slices {gap['slices'][0]}-{gap['slices'][1]}" if gap.get("slices") else "")
            + "). The network saw air (-1024 HU) there as CT: lesions in this region may be missed or spurious.")
    return out


def render_study_report_html(report: Mapping, images: Sequence[tuple[str, bytes]] = ()) -> str:
    """The HTML page of one study.

    Args:
        report: the study's ``report.json`` record: ``study`` (name, identifiers unless anonymized),
            ``totals``, ``lesions`` (table order), ``removed_small``, ``ct_coverage``, ``suv``, ``model``,
            ``software``, ``settings``, ``warnings``, ``generated``.
        images: (caption, PNG bytes) pairs shown side by side (e.g. coronal and sagittal MIP).

    Returns:
        A complete UTF-8 HTML document (``<!DOCTYPE html>`` ...), self-contained.
    """
    study = report.get("study", {})
    totals = report.get("totals", {})
    lesions = report.get("lesions", [])
    settings = report.get("settings", {})
    parts: list[str] = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>Lesion report - {_e(study.get('name'))}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        f"<h1>PET/CT lesion report: {_e(study.get('name'))}</h1>",
        f'<p class="ruo" id="research-use">{_e(RESEARCH_USE_LINE)}</p>',
    ]
    # identifiers
    if study.get("anonymized"):
        ident = [("Identifiers", "omitted (--anonymize)")]
    else:
        ident = [("Patient name", study.get("patient_name")), ("Patient ID", study.get("patient_id")),
                 ("Study date", study.get("study_date")), ("Study description", study.get("study_description")),
                 ("Accession number", study.get("accession_number")), ("Study instance UID", study.get("study_uid"))]
    ident += [("Input", study.get("source_format")), ("PET series", study.get("pet_series_description")),
              ("PET grid", study.get("pet_grid_text"))]
    parts += ['<h2>Study</h2>', _kv_table(ident)]

    # summary
    parts.append("<h2>Summary</h2>")
    n = int(totals.get("lesion_count", 0) or 0)
    if n == 0:
        parts.append('<p class="none" id="no-lesion">No lesion found.</p>')
    parts.append(_kv_table([
        ("Lesions", str(n)), ("TMTV (total metabolic tumour volume)", f"{_num(totals.get('tmtv_ml'))} ml"),
        ("Total TLG (total lesion glycolysis)", f"{_num(totals.get('total_tlg'))} SUV x ml"),
        ("Highest SUVmax", _num(totals.get("suv_max"))), ("Highest SUVpeak", _num(totals.get("suv_peak"))),
    ], cls="kv big"))
    warnings = _coverage_text(report.get("ct_coverage", {})) + list(report.get("warnings", []))
    for w in warnings:
        parts.append(f'<p class="warn">{_e(w)}</p>')

    # figures
    if images:
        parts.append('<h2>PET maximum-intensity projections with lesion outlines</h2><div class="figs">')
        for caption, png in images:
            parts.append(f'<figure><img src="{png_data_uri(png)}" alt="{_e(caption)}">'
                         f"<figcaption>{_e(caption)}</figcaption></figure>")
        parts.append("</div>")

    # lesion table
    parts.append("<h2>Lesions (sorted by SUVmax)</h2>")
    if lesions:
        head = ("#", "SUVmax", "SUVpeak", "SUVmean", "MTV (ml)", "TLG (SUV x ml)", "centroid x, y, z (mm)")
        parts.append('<table id="lesions"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
                     + "</tr></thead><tbody>")
        for d in lesions:
            c = ", ".join(f"{v:.1f}" for v in d["centroid_mm"])
            parts.append("<tr>" + "".join(f"<td>{x}</td>" for x in (
                _e(d["lesion_id"]), _num(d["suv_max"]), _num(d["suv_peak"]), _num(d["suv_mean"]),
                _num(d["volume_ml"]), _num(d["tlg"], 1), _e(c))) + "</tr>")
        parts.append("</tbody></table>")
    else:
        parts.append("<p>No lesion.</p>")
    removed = report.get("removed_small", {})
    if removed.get("count"):
        parts.append(f'<p class="note">{int(removed["count"])} component(s) smaller than '
                     f"{_e(fmt_number(removed.get('min_volume_ml'), 3, 'g'))} ml ({_num(removed.get('volume_ml'), 3)} ml in all) "
                     "were removed from the mask and are not listed.</p>")
    parts.append(
        '<p class="note">Lesions: 18-connected components of the predicted mask'
        f" of at least {_e(fmt_number(settings.get('min_volume_ml'), 3, 'g'))} ml. SUVmax: hottest voxel; SUVmean: mean over the"
        " lesion; SUVpeak: mean SUV in a 1 ml sphere centred on the hottest voxel (not restricted to the lesion);"
        " MTV: lesion volume; TLG = SUVmean x MTV. All values from the SUV image on the original PET grid."
        " Coordinates: DICOM patient coordinates (LPS: x to the patient's left, y posterior, z superior).</p>")

    # provenance
    suv = report.get("suv", {})
    parts.append("<h2>SUV</h2>")
    factor = suv.get("factor")
    parts.append(_kv_table([
        ("SUV", suv.get("description")),
        ("SUV factor (SUV per rescaled pixel value)", None if factor is None else fmt_number(factor, 6, "g")),
        ("PET units", suv.get("units")), ("Method", suv.get("method")),
        ("Patient weight (kg)", suv.get("weight_kg")), ("Injected dose (MBq)", suv.get("injected_dose_mbq")),
        ("Uptake time (min)", suv.get("uptake_time_min")), ("Scan time source", suv.get("scan_time_source")),
        ("Injection time source", suv.get("injection_time_source")),
    ]))
    model = report.get("model", {})
    rows = []
    for k, v in model.items():
        if k in ("name", "version", "parameters", "labels", "channel_names"):
            continue
        if isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v))
        elif isinstance(v, dict):
            continue
        rows.append((k.replace("_", " "), v))
    if not rows:  # a model that only identifies itself by name and parameters
        rows = [("name", model.get("name"))] + [(k, v) for k, v in (model.get("parameters") or {}).items()]
    rows.append(("software", ", ".join(f"{k} {v}" for k, v in report.get("software", {}).items())))
    parts += ["<h2>Model</h2>", _kv_table(rows)]
    parts.append(f'<p class="ruo">{_e(RESEARCH_USE_LINE)}</p>')
    parts.append(f'<p class="note">Generated {_e(report.get("generated"))} by nnunetv2_petct.</p>')
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
