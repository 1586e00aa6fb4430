"""AudioLDM 2 large (cvssp/audioldm2-large, text-to-audio) at its published size: the base recipe with the larger
T-UNet (two transformer blocks per Transformer2D and a fourth, self-attention-only Transformer2D after each ResNet:
718.0M parameters against base's 346.9M). Every other network, and every training setting, is base's.

    python train.py --config configs/audioldm2_large.py:ldm,data=/data/train.jsonl,pretrained=/ckpt/audioldm2 \\
        --workdir runs/audioldm2-large/ldm

``get_config("<stage>[,key=value...]")`` takes the options of ``configs/audioldm2_base.py`` (``data``,
``audio_root``, ``audio_template``, ``pretrained``, ``root`` -- default ``runs/audioldm2-large`` --, ``steps``,
``batch``, ``lr``). The UNet with AdamW states needs ~11.5 GB in float32: on devices with less, shard it with
``--config.mesh.fsdp=N``.
"""

from __future__ import annotations

from audioldm2_jax.configs import audioldm2_base as base
from audioldm2_jax.configs import common

VARIANT = "large"


def get_config(arg: str = "ldm"):
    stage, options = common.parse_arg(arg, base.OPTIONS)
    return base.build(stage, options, variant=VARIANT)
