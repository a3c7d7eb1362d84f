"""Layer 4, training: steppers (svi, fast, CUDA graph), the Trainer, its callbacks,
data-parallel training, the sync guard.

Imports from :mod:`pyrovae.components` and :mod:`pyrovae.inference`.
"""
