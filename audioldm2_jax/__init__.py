"""AudioLDM 2 in JAX/Flax."""

__version__ = "0.1.0"

__all__ = ["AudioLDM2Pipeline"]


def __getattr__(name):
    # The pipeline pulls in every model and transformers' tokenizers: import it only when asked for.
    if name == "AudioLDM2Pipeline":
        from audioldm2_jax.pipeline import AudioLDM2Pipeline

        return AudioLDM2Pipeline
    raise AttributeError(f"module 'audioldm2_jax' has no attribute {name!r}")
