"""torchvggish's ``VGG`` / ``VGGish`` <-> :class:`~audioldm2_jax.models.vggish.VGGish`: its state dict (the published
``vggish-10086976.pth``) <-> a bare Flax params tree.

Keys map by the shared rule of :mod:`~audioldm2_jax.convert.weights` (``features.3.weight`` <->
``features_3/kernel``, Conv2d ``(out, in, kh, kw)`` <-> ``(kh, kw, in, out)``, Linear ``(out, in)`` <-> ``(in, out)``):
the reference's NCHW feature map is transposed to NHWC before its flatten, which is the order of the channels-last
flatten here, so ``embeddings.0.weight`` needs no column permutation. The PCA postprocessor's parameters
(``pproc.pca_eigen_vectors`` / ``pproc.pca_means``, in a state dict saved from a ``VGGish(postprocess=True)``) are
dropped: FAD uses the embeddings before PCA.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
import numpy as np

from audioldm2_jax.convert.weights import StateDict, convert_state_dict, load_state_dict, params_to_state_dict
from audioldm2_jax.models.vggish import VGGish, VGGishConfig, vggish_dummy_inputs

# The reference's Sequential attributes (``features.3``, ``embeddings.4``).
_CONTAINERS = frozenset({"features", "embeddings"})
_POSTPROCESSOR = "pproc."


def vggish_param_shapes(config: VGGishConfig = VGGishConfig()):
    """The abstract params tree (``ShapeDtypeStruct`` leaves, logical axes boxed) of ``VGGish(config)``."""
    return jax.eval_shape(VGGish(config).init, jax.random.key(0), *vggish_dummy_inputs(config))["params"]


def _rename(key: str) -> str | None:
    return None if key.startswith(_POSTPROCESSOR) else key


def to_flax(state_dict: Mapping[str, np.ndarray], config: VGGishConfig = VGGishConfig(),
            source: str = "vggish") -> dict:
    """torchvggish's state dict (``features.{0,3,6,8,11,13}.*``, ``embeddings.{0,2,4}.*``) -> a bare params tree;
    a missing, unexpected or misshaped key is a ``CheckpointError`` naming ``source``."""
    return convert_state_dict(state_dict, vggish_param_shapes(config), source=source, rename=_rename)


def to_torch(params, config: VGGishConfig = VGGishConfig()) -> StateDict:
    """A bare params tree -> torchvggish's ``VGG`` state dict (float32): the inverse of :func:`to_flax`."""
    return params_to_state_dict(params, _CONTAINERS)


def load_params(path: str | os.PathLike, config: VGGishConfig = VGGishConfig()) -> dict:
    """The params tree of a torchvggish weights file (``vggish-10086976.pth``: a state dict saved by ``torch.save``)."""
    return to_flax(load_state_dict(path), config, source=str(path))
