"""Our nnU-Net trainers. Import the concrete modules (``base``, ``mae``, ``finetune``) directly."""
