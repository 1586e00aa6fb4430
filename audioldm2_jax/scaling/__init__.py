"""Scaling-law experiments: isoFLOP sweeps of the T-UNet (``sweep``), their runners (``runner``: local, SLURM job
array), the fits (``fit``: isoFLOP parabolas, the parametric law with bootstrap intervals), figures (``plots``) and
the report (``report``); ``python -m audioldm2_jax.scaling sweep|run|fit|demo``. docs/scaling.md."""
