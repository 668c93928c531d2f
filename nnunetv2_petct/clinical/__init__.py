"""Clinical use: PET/CT studies (DICOM or NIfTI) to lesion mask, DICOM-SEG and SUV lesion report.

Pure library (no nnunetv2 import): :func:`~nnunetv2_petct.clinical.pipeline.predict_studies` takes the model as
an object; ``nnunetv2_petct.nnunet.predictor`` wraps nnU-Net's own predictor for it, and the console script
``nnUNetv2_petct_predict`` joins the two.
"""
