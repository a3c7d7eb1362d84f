"""The speed benchmark's VAE in NumPyro, the whole epoch in one ``jax.jit``-ed ``fori_loop``.

Used by ``benchmarks/speed.py --variants ... numpyro_jit`` when ``numpyro`` and ``jax`` are
installed (never a dependency of pyrovae, nor of its CI). Same sizes as the other variants
(``Arch``'s encoder and decoder layers), the same activation, Bernoulli likelihood on the same
binarised data, N(0, I) prior, ``Trace_ELBO`` with one sample, Adam at the same rate; weights
initialised as torch's ``nn.Linear`` does (uniform in +-1/sqrt(fan_in)), from NumPy's RNG.
The compile time (ahead of time, ``jit(...).lower(...).compile()``) is printed on its own.
"""

from __future__ import annotations

import time

import numpy as np


def available() -> bool:
    try:
        import jax  # noqa: F401
        import numpyro  # noqa: F401
    except ImportError:
        return False
    return True


def numpyro_variant(arch, train, test, batch_size, device, lr: float, z_dim: int,
                    make_variant):
    """A ``Variant`` (``make_variant(epoch, test_elbo, device)``) training with NumPyro."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer import SVI, Trace_ELBO

    activation = {"relu": jax.nn.relu, "tanh": jnp.tanh}[arch.activation]
    rng = np.random.default_rng(0)
    init = {}
    for side, layers in (("enc", arch.encoder_layers()), ("dec", arch.decoder_layers())):
        for i, (fan_in, fan_out) in enumerate(layers):
            bound = 1.0 / np.sqrt(fan_in)
            init[f"{side}{i}_w"] = rng.uniform(-bound, bound, (fan_in, fan_out)).astype("f4")
            init[f"{side}{i}_b"] = rng.uniform(-bound, bound, (fan_out,)).astype("f4")

    def mlp(side, x, layers):
        for i in range(layers):
            x = x @ numpyro.param(f"{side}{i}_w", init[f"{side}{i}_w"]) + \
                numpyro.param(f"{side}{i}_b", init[f"{side}{i}_b"])
            if i < layers - 1:
                x = activation(x)
        return x

    def model(x):
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", nd.Normal(0.0, 1.0).expand([z_dim]).to_event(1))
            logits = mlp("dec", z, len(arch.decoder_layers()))
            numpyro.sample("x", nd.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        with numpyro.plate("data", x.shape[0]):
            loc, raw = jnp.split(mlp("enc", x, len(arch.encoder_layers())), 2, axis=-1)
            numpyro.sample("z", nd.Normal(loc, jax.nn.softplus(raw) + 1e-5).to_event(1))

    data = jnp.asarray(train.reshape(len(train), -1).cpu().numpy())
    test_data = jnp.asarray(test.reshape(len(test), -1).cpu().numpy())
    steps, n = len(train) // batch_size, len(train)
    svi = SVI(model, guide, numpyro.optim.Adam(lr), Trace_ELBO())
    key = jax.random.PRNGKey(0)
    state = {"svi": svi.init(key, data[:batch_size]), "key": key}

    def epoch_fn(svi_state, key):
        order = jax.random.permutation(key, n)

        def body(i, carry):
            s, total = carry
            batch = data[jax.lax.dynamic_slice(order, (i * batch_size,), (batch_size,))]
            s, loss = svi.update(s, batch)
            return s, total + loss

        return jax.lax.fori_loop(0, steps, body, (svi_state, 0.0))

    start = time.perf_counter()
    compiled = jax.jit(epoch_fn).lower(state["svi"], key).compile()
    print(f"  numpyro_jit: compiled the epoch in {time.perf_counter() - start:.2f} s "
          f"(jax {jax.__version__}, numpyro {numpyro.__version__})", flush=True)

    def epoch():
        state["key"], sub = jax.random.split(state["key"])
        state["svi"], total = compiled(state["svi"], sub)
        total.block_until_ready()

    def test_elbo() -> float:
        total = sum(float(svi.evaluate(state["svi"], test_data[i:i + 1000]))
                    for i in range(0, len(test_data), 1000))
        return -total / len(test_data)

    return make_variant(epoch, test_elbo, device)
