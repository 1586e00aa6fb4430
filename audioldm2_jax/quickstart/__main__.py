"""``python -m audioldm2_jax.quickstart``: see :mod:`audioldm2_jax.quickstart`."""

from audioldm2_jax.quickstart.job import main

if __name__ == "__main__":
    main()
