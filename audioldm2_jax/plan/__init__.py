"""Ahead-of-time plans for pods: the training step of a stage compiled for a TPU topology (or estimated for a GPU
cluster) on this host, with its memory per chip, FLOPs, a roofline step time and the layouts that fit
(``python -m audioldm2_jax.plan``, docs/pods.md)."""
