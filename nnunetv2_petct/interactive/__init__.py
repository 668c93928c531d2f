"""Click-guided (interactive) lesion segmentation, the pure parts (no nnU-Net): the autoPET IV click format
(:mod:`.clicks`), click heatmaps and their mapping into nnU-Net's preprocessed grid (:mod:`.heatmaps`), click
simulation for training and evaluation (:mod:`.simulation`) and the autoPET IV interactive metrics
(:mod:`.protocol`)."""
