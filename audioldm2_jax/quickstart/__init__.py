"""The quickstart, end to end: every training stage at tiny size on the procedural dataset, then sampling from the
result and a report of how well the audio follows its prompts.

    python -m audioldm2_jax.quickstart [--root runs/quickstart] [--prompts 48] [--steps-scale 1.0]

What it does, in order (``audioldm2_jax/configs/quickstart.py`` holds every size, step count and sampler
setting; one module per step):

1. ``root/text`` (:mod:`.text`): the shared text pieces, built once: a CLAP tokenizer (RoBERTa BPE,
   ``tokenizer/``) and a T5 tokenizer (SentencePiece, ``tokenizer_2/``) trained on captions of the quickstart
   grammar, and the frozen, randomly initialised T5 and CLAP text encoders (``t5/``, ``clap/`` component folders).
   Random frozen encoders still map different captions to different features; the trained networks learn to read
   them.
2. ``root/<stage>`` (:mod:`.stages`) for the stages of :data:`audioldm2_jax.train.stages.STAGE_ORDER`, each trained
   by the trainer in a child process of its own (one device; its log in ``root/<stage>/quickstart_stage.log``), two
   at a time where the stages' inputs allow (:func:`train_stages`): a stage whose export is complete (every
   component at the configured step) is skipped, and an interrupted one resumes from its latest checkpoint (the
   trainer does that by itself; Ctrl-C or SIGTERM makes it save first).
3. ``root/samples`` (:mod:`.sampling`): ``--prompts`` captions drawn from the quickstart grammar (fixed seed),
   sampled from the joint stage's export with :class:`audioldm2_jax.pipeline.AudioLDM2Pipeline` (one WAV,
   spectrogram PNG and JSON per clip, as ``sample.py`` writes them); and again into ``root/samples_true_loa`` from
   the LOA of the prompts' true clips instead of GPT-2's, which tells the diffusion model's prompt following apart
   from the language model's.
4. ``root/report.json`` / ``root/report.md`` (:mod:`.report`; the scores of :mod:`audioldm2_jax.eval.prompts`; also
   printed): prompt following measured on the WAV files with the procedural dataset's estimators (pitch class,
   instrument family, tempo class) and, apart, the pitch class read from the spectrogram the diffusion model
   generated (before the vocoder). Every accuracy stands beside two baselines from the same clips: the same
   estimates scored against shuffled prompts (what a prompt-ignoring generator gets) and the best constant answer.
   Also the same checks on the samples from the true clips' LOA, on the prompts' true clips (the ceiling), on true
   clips against mismatched prompts (the floor), and through the trained vocoder (and VAE), which bound what the
   chain can reach; wall and CPU time per step of the job; ``root/spectrograms.png`` (true clip, generated
   spectrogram and generated audio for a handful of prompts) with a listening list (``root/true/<name>.wav``
   beside ``root/samples/<name>.wav``); and ``root/loss_<stage>.png`` loss curves from each stage's
   ``metrics.jsonl``.
5. ``root/editing`` (:mod:`.editing_demo`): the trained model edits a few true clips toward prompts for other notes
   (a style transfer and an inpainting of each), with the notes read back, in the report beside their baselines.

``--micro`` runs the same job at the smallest sizes with a few steps (the test suite's end-to-end check).
"""

from audioldm2_jax.quickstart.job import cli, main, run
from audioldm2_jax.quickstart.stages import expected_exports, export_complete, stage_config, train_stages

__all__ = ["cli", "expected_exports", "export_complete", "main", "run", "stage_config", "train_stages"]
