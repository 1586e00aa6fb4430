"""Trains one stage of AudioLDM 2: see :mod:`audioldm2_jax.train.main` (also installed as ``audioldm2-train``).

    python train.py --config configs/quickstart.py:ldm --workdir runs/quickstart/ldm
"""

from audioldm2_jax.train.main import run

if __name__ == "__main__":
    run()
