"""One module per measurement of `python -m zfnet_jax.benchmark`, each beside its reference."""
