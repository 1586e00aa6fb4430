"""AudioLDM 2 in JAX/Flax."""

__version__ = "0.1.0"

__all__ = ["AudioLDM2Pipeline", "NonFiniteOutputError"]


def __getattr__(name):
    # The pipeline pulls in every model and transformers' tokenizers: import it only when asked for.
    if name in ("AudioLDM2Pipeline", "NonFiniteOutputError"):
        from audioldm2_jax import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'audioldm2_jax' has no attribute {name!r}")
