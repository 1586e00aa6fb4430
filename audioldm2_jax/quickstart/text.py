"""Step 1 of the quickstart: the shared text pieces under ``root/text``, built once and read by every stage that
conditions on captions: a CLAP tokenizer (RoBERTa BPE, ``tokenizer/``) and a T5 tokenizer (SentencePiece,
``tokenizer_2/``) trained on captions of the quickstart grammar, and the frozen, randomly initialised T5 and CLAP
text encoders (``t5/``, ``clap/``: transformers' ``T5EncoderModel`` / ``ClapModel`` folders, CLAP's text tower).
Random frozen encoders still map different captions to different features; the trained networks learn to read
them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax

from audioldm2_jax import components
from audioldm2_jax.configs import quickstart as qs
from audioldm2_jax.train import config as config_lib
from audioldm2_jax.train import text as text_lib


def build_text(root: str | os.PathLike, config) -> dict[str, Any]:
    """Tokenizers (trained on captions of the quickstart grammar) and randomly initialised frozen T5 / CLAP text
    encoders under ``root/text``; pieces already there are kept. Returns what was built."""
    text_dir = Path(root) / "text"
    built: dict[str, Any] = {}
    tokenizers = {"clap": (text_dir / "tokenizer", text_lib.train_clap_tokenizer, config.model.clap.text.vocab_size),
                  "t5": (text_dir / "tokenizer_2", text_lib.train_t5_tokenizer, config.model.t5.vocab_size)}
    captions = None
    for encoder, (folder, train_fn, model_vocab) in tokenizers.items():
        if not (folder / "tokenizer_config.json").is_file():
            if captions is None:
                captions = text_lib.procedural_captions(count=4000, seed=0, **qs.GRAMMAR)
            tokenizer = train_fn(captions, folder, vocab_size=min(1000, int(model_vocab)))
            # the caption length training uses, so that the pipeline truncates (and pads the T5 stream) the same
            tokenizer.model_max_length = int(config.text[f"{encoder}_max_length"])
            tokenizer.save_pretrained(str(folder))
            built[f"{encoder}_tokenizer"] = str(folder)
        size = len(text_lib.load_tokenizer(folder))
        if size > int(model_vocab):
            raise ValueError(f"{folder}: the {encoder} tokenizer has {size} tokens, more than the model's vocab_size "
                             f"{model_vocab} (model.{'clap.text' if encoder == 'clap' else 't5'}.vocab_size)")
    for index, name in enumerate(("t5", "clap")):
        folder = text_dir / name
        if components.read_training(folder):  # written last: the weights and config.json are there
            continue
        model_config = config_lib.model_config(config, name)
        params = nn.unbox(jax.jit(components.init_fn(name, model_config))(jax.random.key(1000 + index)))
        components.save(name, folder, model_config, jax.device_get(params),
                        {"random_init": True, "note": "frozen; random weights still tell captions apart"})
        built[name] = str(folder)
    return built
