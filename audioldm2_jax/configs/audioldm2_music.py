"""AudioLDM 2 music (cvssp/audioldm2-music, text-to-music): the base shapes and recipe on music data.

    python train.py --config configs/audioldm2_music.py:ldm,data=/data/musiccaps.csv,audio_root=/data/mc \\
        --workdir runs/audioldm2-music/ldm

``get_config("<stage>[,key=value...]")`` takes the options of ``configs/audioldm2_base.py``; ``root`` defaults to
``runs/audioldm2-music``. Music defaults: a MusicCaps-style manifest (``ytid, ..., aspect_list, caption``; with
no path column the audio is ``{ytid}.wav``, ``audio_template=...`` changes it), random 10.24 s crops of longer
tracks. The self-supervised stages (VAE, vocoder, AudioMAE) need no captions and have base's shapes: to reuse
base's, point ``root`` at the base runs for those stages or set ``--config.init.vae`` / ``--config.init.audiomae``.
"""

from __future__ import annotations

from audioldm2_jax.configs import audioldm2_base as base
from audioldm2_jax.configs import common

VARIANT = "music"
AUDIO_TEMPLATE = "{ytid}.wav"  # MusicCaps rows name the YouTube clip, not a file


def get_config(arg: str = "ldm"):
    stage, options = common.parse_arg(arg, base.OPTIONS)
    c = base.build(stage, options, variant=VARIANT, audio_template=AUDIO_TEMPLATE)
    c.data.random_crop = True  # tracks are longer than a clip: a new 10.24 s window each epoch
    return c
