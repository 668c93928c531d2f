"""Convert public PET/CT cohorts into nnU-Net v2 raw datasets (``_0000`` = CT in HU, ``_0001`` = PET).

Pure library package (no nnunetv2 import). Layout:

- :mod:`.core` — the framework: :class:`~.core.CaseSource` (one study and how to load it),
  :func:`~.core.convert_cases` (harmonize, write atomically, in parallel, skip finished cases),
  manifests and ``dataset.json``;
- one module per cohort that only *discovers* cases (:mod:`.autopet`, :mod:`.deep_psma`,
  :mod:`.spade`, :mod:`.vimed`, :mod:`.generic_dicom`; DICOM reading and SUV in :mod:`.dicom`);
- :mod:`.arrays` — header-less ``.npy``/``.npz`` inputs (SPADE, ViMed-PET);
- :mod:`.registry` — cohort names -> discover functions, and :func:`~.registry.convert_cohort`,
  the library entry point of ``nnUNetv2_petct_convert``;
- :mod:`.pretraining` — merge converted datasets into one unlabeled pretraining dataset.

Submodules are imported on demand (``from nnunetv2_petct.conversion.registry import convert_cohort``);
this file imports nothing heavy.
"""
