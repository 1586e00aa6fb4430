"""Generate audio with AudioLDM 2: see :mod:`audioldm2_jax.sample` (also installed as ``audioldm2-sample``).

    python sample.py --checkpoint cvssp/audioldm2 --prompt "a dog barks in the rain" --out runs/samples
"""

from audioldm2_jax.sample import main, parse_args, run

__all__ = ["main", "parse_args", "run"]

if __name__ == "__main__":
    run()
