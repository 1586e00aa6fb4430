"""timm's transformer blocks for the AudioMAE references (``tests/test_audiomae.py``, ``bench/audiomae.py``).

timm imports torchvision at import time; where torchvision is missing, or is a CUDA build that fails to load
against a CPU torch (``operator torchvision::nms does not exist``), a stand-in serves those imports while timm
loads and is removed afterwards (the blocks used here never touch torchvision).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _AnyName(type):
    """Stands for any torchvision class or constant that timm names at import time."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _AnyName(name, (), {})


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves every ``torchvision`` import with an empty package whose attributes are ``_AnyName`` classes."""

    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = lambda attr: _AnyName(attr, (), {}) if not attr.startswith("__") else None
        return module

    def exec_module(self, module):
        module.__path__ = []


def _drop_modules(prefix: str) -> dict:
    """Removes ``prefix`` and its submodules from ``sys.modules``; returns what it removed."""
    found = {k: v for k, v in sys.modules.items() if k == prefix or k.startswith(prefix + ".")}
    for k in found:
        del sys.modules[k]
    return found


def timm_blocks():
    """``(PatchEmbed, Block, SwinTransformerV2CrBlock)`` from timm, loaded with the torchvision stand-in if needed."""
    try:
        import timm  # noqa: F401  (heavy, optional: imported on use)
    except (ImportError, RuntimeError):
        _drop_modules("timm")
        saved = _drop_modules("torchvision")
        finder = _TorchvisionStandIn()
        sys.meta_path.insert(0, finder)
        try:
            import timm  # noqa: F401
        finally:
            sys.meta_path.remove(finder)
            _drop_modules("torchvision")
            sys.modules.update(saved)
    from timm.layers import PatchEmbed
    from timm.models.swin_transformer_v2_cr import SwinTransformerV2CrBlock
    from timm.models.vision_transformer import Block

    return PatchEmbed, Block, SwinTransformerV2CrBlock
