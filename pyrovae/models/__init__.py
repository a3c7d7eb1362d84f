"""Layer 2, models: model/guide pairs built from components (the VAE, the conditional VAE,
the linear-Gaussian reference, the conditioning tasks).

Imports from :mod:`pyrovae.components` only.
"""
