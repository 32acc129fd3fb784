"""Sampling-based evaluation of a trained pipeline: draw samples for test conditions and score them (``iqvae evaluate``)."""
