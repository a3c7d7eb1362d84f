"""Layer 3, inference: estimators (a base module and one module per family), KL, effect
handlers, evaluation (ELBO, log P(X)), and the statistics ``check-kl`` and ``compare`` share.

Works on any ``(model, guide)`` pair of Pyro callables: imports from
:mod:`pyrovae.components` only, nothing from :mod:`pyrovae.models`.
"""
