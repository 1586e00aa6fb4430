"""Caption tokenization for training, and small tokenizers trained on the spot for from-scratch models.

Published AudioLDM 2 checkpoints bring their tokenizers (RoBERTa BPE for CLAP, FLAN-T5's SentencePiece); a model
trained from scratch on the procedural dataset gets its own: a byte-level BPE in RoBERTa's layout and a
SentencePiece unigram model in T5's layout, trained on captions from the dataset's grammar and saved with
``save_pretrained`` so that transformers' ``AutoTokenizer`` (and the inference pipeline) load them like the
published ones.

Training batches need static shapes: captions are padded (and cut) to a fixed ``max_length``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from audioldm2_jax.data.procedural import caption_for, sample_attributes

CLAP_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def load_tokenizer(path: str | os.PathLike):
    """A transformers tokenizer from a local folder (or a hub id when online)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """``texts`` -> ``(input_ids int32 [B, max_length], attention_mask int32 [B, max_length])``, padded at the end
    and cut to ``max_length`` (the cut keeps the final special token)."""
    out = tokenizer([str(t) for t in texts], padding="max_length", max_length=int(max_length), truncation=True,
                    return_tensors="np")
    return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32)


def procedural_captions(count: int = 4000, seed: int = 0, **grammar) -> list[str]:
    """Captions drawn from the procedural dataset's grammar (every wording), for training tokenizers."""
    rng = np.random.default_rng(seed)
    return [caption_for(sample_attributes(rng, **grammar), rng) for _ in range(count)]


def train_clap_tokenizer(captions: Sequence[str], directory: str | os.PathLike, vocab_size: int = 1000):
    """A byte-level BPE in RoBERTa's layout (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2), saved to ``directory``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(captions), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=list(CLAP_SPECIAL_TOKENS), show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = RobertaTokenizer(vocab=model["vocab"], merges=merges)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def train_t5_tokenizer(captions: Sequence[str], directory: str | os.PathLike, vocab_size: int = 1000):
    """A SentencePiece unigram model in T5's layout (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, no BOS), saved to
    ``directory``. ``vocab_size`` is an upper bound: a small grammar yields fewer pieces."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(list(captions)), model_writer=buffer,
                                   vocab_size=vocab_size, hard_vocab_limit=False, model_type="unigram", pad_id=0,
                                   eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_proto=buffer.getvalue())
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def build_caption_tokenizers(directory: str | os.PathLike, captions: Sequence[str] | None = None,
                             vocab_size: int = 1000) -> tuple[Path, Path]:
    """Trains both tokenizers (on ``captions``, default: the procedural grammar) into ``directory/clap_tokenizer``
    and ``directory/t5_tokenizer``; returns the two folders. Reuses folders that already exist."""
    directory = Path(directory)
    clap_dir, t5_dir = directory / "clap_tokenizer", directory / "t5_tokenizer"
    if (clap_dir / "tokenizer_config.json").is_file() and (t5_dir / "tokenizer_config.json").is_file():
        return clap_dir, t5_dir
    captions = list(captions) if captions is not None else procedural_captions()
    train_clap_tokenizer(captions, clap_dir, vocab_size)
    train_t5_tokenizer(captions, t5_dir, vocab_size)
    return clap_dir, t5_dir
