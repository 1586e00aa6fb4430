"""AudioLDM 2 speech (the audioldm2-gigaspeech / audioldm2-ljspeech models) at the published sizes.

    python train.py --config configs/audioldm2_speech.py:ldm --workdir runs/speech/ldm
    python train.py --config configs/audioldm2_speech.py:gpt2,pretrained=/ckpt/audioldm2-gigaspeech \\
        --workdir runs/speech/gpt2
    python train.py --config configs/audioldm2_speech.py:joint,data=gigaspeech,path=/data/gigaspeech/train.jsonl \\
        --workdir runs/speech/joint

``get_config("<stage>[,key=value...]")``, stage one of vae, vocoder, audiomae, ldm, gpt2, joint. Options:

- ``root=DIR`` (default ``runs/speech``): later stages read earlier stages' exports under ``DIR/<stage>/export``
  (the stage classes' ``reads_from``: the LDM reads the VAE and AudioMAE, GPT-2 the AudioMAE, joint the LDM's UNet
  and VAE and GPT-2's projection and GPT-2);
- ``pretrained=DIR``: a diffusers-layout speech checkpoint (e.g. a local copy of cvssp/audioldm2-gigaspeech) whose
  frozen text encoders are used: CLAP's text tower (``text_encoder/``, tokenizer ``tokenizer/``) and the VITS
  phoneme encoder (``text_encoder_2/``, ``VitsTokenizer`` in ``tokenizer_2/``; phonemizing needs the
  ``phonemizer`` package and espeak). Without it, set ``init.clap`` / ``init.vits`` and ``text.clap_tokenizer`` /
  ``text.vits_tokenizer`` yourself (random frozen encoders otherwise: the joint stage then reads GPT-2's);
- ``data=ljspeech`` (default) | ``ljspeech_tfds`` | ``gigaspeech`` | ``procedural``, ``path=...``: the corpus (see
  ``DATA`` below; the paths there are placeholders for your copies).

What differs from the text-to-audio base model (``text_encoder_2="vits"``):

- the second text stream is the VITS phoneme encoder of each clip's transcription (192-d, 6 layers, 2 heads,
  vocabulary 183), padded to 310 phonemes (the original config's ``pad_length``) with the end-of-phonemes mark,
  plus the projection's learned position table (``max_seq_length`` 310); CLAP still reads the caption;
- the UNet cross-attends to the GPT-2 / LOA stream only (``cross_attention_dim`` ``[None, 768]`` per block, no T5
  stream), so the LDM and joint stages build no T5 at all;
- the LOA is AudioMAE's full 64 x 8 patch grid, pooled at lambda 1: 512 tokens, fixed (``ldm.loa_lambdas=(1,)``,
  ``gpt2.loa_lambda=1``, ``model.gpt2.max_new_tokens=512``); GPT-2's prompt + LOA then fill 1 + 2 + 310 + 2 + 511 =
  826 of its 1024 positions.

Speech corpora have transcriptions but rarely captions: ``text.default_caption`` is CLAP's caption for clips
without one (prompt with the same words at inference).
"""

from audioldm2_jax.configs import common

# Corpus presets. The paths are placeholders: point `path` at your copy.
DATA = {
    # LJSpeech-1.1's metadata.csv (id|transcription|normalised transcription; audio in wavs/ beside it): one
    # female reader, 13,100 clips of 1-10 s (resampled from 22.05 kHz, padded to the clip length).
    "ljspeech": dict(source="manifest", path="/data/LJSpeech-1.1/metadata.csv",
                     default_caption="A female reader is speaking"),
    # The TFDS build of LJSpeech (needs tensorflow-cpu to decode its Audio feature; see the project README).
    "ljspeech_tfds": dict(source="tfds", path="ljspeech", default_caption="A female reader is speaking"),
    # GigaSpeech segments as a JSONL / CSV manifest with one row per segment WAV: a path column ("path" / "audio"
    # / "file_name") and a "transcription" (or "text") column, e.g. GigaSpeech.json's segments cut to files with
    # their `text_tn` (garbage-utterance tags and <COMMA>-style punctuation tags removed or spelled out).
    "gigaspeech": dict(source="manifest", path="/data/gigaspeech/train.jsonl",
                       default_caption="A person is speaking"),
    # Smoke runs without a speech corpus: procedural clips, whose empty transcriptions read the caption.
    "procedural": dict(source="procedural", path="", default_caption=""),
}

# Starting points for a pod run, not a published recipe (the original reports learning rates 1e-4 for the LDM and
# 2e-4 for GPT-2, 1.5M LDM steps, 10 % unconditional examples); batch sizes are global: scale them with the mesh.
# VAE, vocoder and AudioMAE have the base model's shapes; the speech corpus is their data here.
STEPS = {"vae": 500_000, "vocoder": 500_000, "audiomae": 400_000, "ldm": 1_500_000, "gpt2": 500_000,
         "joint": 200_000}
BATCH = {"vae": 32, "vocoder": 32, "audiomae": 64, "ldm": 64, "gpt2": 64, "joint": 64}
LEARNING_RATE = {"vae": 8e-6, "vocoder": 2e-4, "audiomae": 2e-4, "ldm": 1e-4, "gpt2": 2e-4, "joint": 5e-5}

PHONEME_LENGTH = 310  # the original speech config's PhonemeEncoder pad_length: the position table's length
LOA_TOKENS = 512  # 64 x 8 AudioMAE patches, pooling lambda 1
OPTIONS = ("root", "pretrained", "data", "path")


def speech_models(c) -> None:
    """The speech checkpoints' architecture on top of the base (text-to-audio) sizes of ``base_config``."""
    c.model.text_encoder_2 = "vits"
    c.model.unet.cross_attention_dim = ((None, 768),) * 4
    c.model.vits.update(dict(vocab_size=183, hidden_size=192, num_hidden_layers=6, num_attention_heads=2,
                             window_size=4, ffn_dim=768, ffn_kernel_size=3, flow_size=192))
    c.model.projection.update(dict(text_encoder_dim=512, text_encoder_1_dim=192, language_model_dim=768,
                                   use_learned_position_embedding=True, max_seq_length=PHONEME_LENGTH))
    c.model.gpt2.max_new_tokens = LOA_TOKENS
    c.text.vits_max_length = PHONEME_LENGTH
    c.ldm.loa_lambdas = (1,)
    c.gpt2.loa_lambda = 1


def get_config(arg: str = "ldm"):
    stage, options = common.parse_arg(arg or "ldm", OPTIONS)
    root = options.get("root", "runs/speech")
    c = common.base_config()
    c.stage = stage
    speech_models(c)

    data = options.get("data", "ljspeech")
    if data not in DATA:
        raise ValueError(f"audioldm2_speech: data={data!r}; expected one of {tuple(DATA)}")
    preset = dict(DATA[data])
    c.text.default_caption = preset.pop("default_caption")
    if preset["source"] == "procedural":
        common.procedural_data(c, 10.24)
        c.text.transcription_from_caption = True
    else:
        c.data.source = preset["source"]
        c.data.path = options.get("path", preset["path"])
        c.data.clip_seconds = 10.24
    c.data.compute_fbank = stage in ("audiomae", "ldm", "gpt2", "joint")

    # Earlier stages' exports, and the published frozen text encoders.
    common.link_stages(c, stage, root)
    pretrained = options.get("pretrained", "")
    if pretrained and stage in ("gpt2", "joint"):
        c.init.clap = pretrained  # text_encoder/ and tokenizer/ of the pipeline folder
        c.init.vits = pretrained  # text_encoder_2/ and tokenizer_2/
    elif stage == "joint":  # the (random) frozen encoders GPT-2 was trained against, with their tokenizers
        c.init.clap = c.init.vits = f"{root}/gpt2/export"

    c.num_steps = STEPS[stage]
    c.batch_size = BATCH[stage]
    c.optimizer.learning_rate = LEARNING_RATE[stage]
    c.optimizer.warmup_steps = 5000
    c.optimizer.schedule = "constant"
    c.ema.decay = 0.9999 if stage in ("ldm", "joint") else 0.0
    c.ldm.cond_dropout = 0.1
    c.gpt2.cond_dropout = 0.1
    c.checkpoint.every_steps = 5000
    c.log.every_steps = 100
    c.log.sample_every_steps = 0
    c.eval.every_steps = 5000  # held-out losses on 1 % of the corpus (train/held_out.py)
    return c
