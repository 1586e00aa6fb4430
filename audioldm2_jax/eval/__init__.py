"""How good a model is.

- :mod:`.run`: ``evaluate(generated_dir, reference_dir, ...)`` and ``python -m audioldm2_jax.eval``: FAD (VGGish),
  FD / KL / IS (PANNs CNN14, 16 kHz) and CLAP score on folders of audio, with cached reference features;
- :mod:`.metrics`: the formulas (Frechet distance, KL, IS, CLAP score, FAD-inf) as the field's tools compute them;
- :mod:`.clap_score`: CLAP text / audio embeddings for the CLAP score;
- :mod:`.procedural`, :mod:`.prompts`: the procedural dataset's estimators (pitch class, instrument family, onset
  rate) and the quickstart's prompt-following scores.

This package imports nothing itself: the estimators run in host input workers that never import JAX.
"""
