"""Layer 1, components: networks, priors, likelihoods, guides, flows, the data sets, and the
small shared helpers (the name-keyed :class:`~pyrovae.components.registry.Registry`, argument
validation, RNG forks).

Imports nothing from the other layers of pyrovae.
"""
