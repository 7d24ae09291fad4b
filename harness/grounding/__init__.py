"""Visual grounding training: VLM-verified pseudo-labels for the detector, and its fine-tuning."""
