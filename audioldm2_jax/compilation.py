"""Ahead-of-time compilation with the project's XLA options.

On CPU, XLA (jax 0.10) hands convolutions, matrix products and the element-wise work around them to YNNPACK
"library fusions". For this project's convolution-heavy models (the T-UNet, the VAE decoder) they are the slower
choice on the CPUs measured, where XLA's own emitters and Eigen's kernels run the same products faster
(docs/benchmarks.md, "Pipeline end to end"). :func:`compile_lowered` therefore compiles with XLA's own CPU code
generation unless the user chose the library fusions in ``XLA_FLAGS``. Other backends compile with XLA's defaults.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)

# Empty: no YNNPACK library fusions (XLA's own emitters and Eigen's convolutions / matrix products instead).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(platform: str) -> dict[str, str]:
    """The options :func:`compile_lowered` passes for a program compiled for ``platform`` ("cpu", "gpu", "tpu": the
    platform of the program's devices, which is not the host's backend when compiling ahead of time for other
    devices). Options that ``XLA_FLAGS`` sets are left to it."""
    if platform != "cpu":
        return {}
    flags = os.environ.get("XLA_FLAGS", "")
    return {name: value for name, value in CPU_COMPILER_OPTIONS.items() if name not in flags}


def lowered_platform(lowered: jax.stages.Lowered) -> str:
    """The platform ``lowered`` was lowered for: that of the devices of its shardings (or of the default device it
    was placed on). Read from the lowering's compile arguments (jax keeps no public accessor); a jax whose lowering
    lacks them gives JAX's default backend, the platform of every program without explicit devices."""
    backend = getattr(getattr(lowered, "_lowering", None), "compile_args", {}).get("backend")
    return str(getattr(backend, "platform", None) or jax.default_backend())


def compile_lowered(lowered: jax.stages.Lowered, *, xla_defaults: bool = False,
                    platform: str | None = None) -> jax.stages.Compiled:
    """``lowered.compile()`` with :func:`compiler_options` of ``platform``, the platform the program was lowered for
    (e.g. its mesh's ``devices.flat[0].platform``; default: :func:`lowered_platform`), or without them
    (``xla_defaults``). An XLA that does not know an option (another jax version) compiles with its defaults."""
    platform = platform or lowered_platform(lowered)
    options = {} if xla_defaults else compiler_options(platform)
    if options:
        try:
            return lowered.compile(compiler_options=options)
        except Exception as error:  # noqa: BLE001 - an unknown option surfaces as a runtime error naming it
            if not any(name in str(error) for name in options):
                raise
            log.info("this XLA does not take %s; compiling with its defaults", sorted(options))
    return lowered.compile()
