"""Step 4 of the quickstart, after sampling: the trained model edits true clips (docs/audio_to_audio.md). A few
source clips are each given a target prompt that asks for another note (same instrument and tempo where the
prompts allow), then

- style transfer (:meth:`AudioLDM2Pipeline.transfer`, SDEdit at :data:`TRANSFER_STRENGTH`): the output's pitch class
  should be the target's;
- inpainting (:meth:`AudioLDM2Pipeline.inpaint` of the middle :data:`INPAINT_SPAN` of the clip): inside the span the
  target's pitch class, outside it the source's, unchanged.

Pitch classes are read from the log-mel spectrograms the diffusion model generates
(:func:`audioldm2_jax.eval.procedural.estimate_pitch_class_from_log_mel`, before the vocoder: the quickstart's
HiFi-GAN cannot render pitch, docs/training.md). Every figure stands next to its baselines: the same estimator on the
unedited source (which must read the source's note: the estimator's own check) and chance, one of 12 pitch classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from audioldm2_jax.audio.io import save_edit_png, write_wav
from audioldm2_jax.data import procedural as dataset
from audioldm2_jax.editing import TimeSpan
from audioldm2_jax.eval.procedural import estimate_pitch_class_from_log_mel
from audioldm2_jax.eval.prompts import true_clips

TRANSFER_STRENGTH = 0.75
INPAINT_SPAN = (0.25, 0.75)  # fractions of the clip: the regenerated middle
PAIRS = 4  # edits of each kind, in one batched call each
CHANCE = 1.0 / 12.0


def pick_pairs(prompts: Sequence[dict], count: int = PAIRS) -> list[tuple[dict, dict]]:
    """``count`` (source, target) prompt pairs whose notes differ: each source (in order) with the first other
    prompt of a different pitch class, preferring the same instrument and tempo (then only the note changes)."""
    pitched = [p for p in prompts if p["attributes"].pitch_classes]
    pairs = []
    for source in pitched:
        a = source["attributes"]
        others = [p for p in pitched if p["attributes"].pitch_classes[0] != a.pitch_classes[0]]
        same = [p for p in others if (p["attributes"].instrument, p["attributes"].tempo_bpm) == (a.instrument,
                                                                                             a.tempo_bpm)]
        if others:
            pairs.append((source, (same or others)[0]))
        if len(pairs) == count:
            break
    if not pairs:
        raise ValueError("the editing demo needs prompts of at least two pitch classes")
    return pairs


def _pitch(log_mel: np.ndarray, instruments: Sequence[str]) -> str:
    return estimate_pitch_class_from_log_mel(log_mel, instruments)


def run_demo(pipe, prompts: Sequence[dict], grammar: Mapping, settings: Mapping, out_dir: str | Path,
             seed: int = 0) -> dict:
    """Runs both edits on :func:`pick_pairs` of ``prompts`` with the sampling ``settings`` (steps, guidance,
    scheduler); writes ``out_dir/{transfer,inpaint}_<source>_to_<target>.wav``, ``.png`` (input above output)
    and ``.mel.npy`` (the generated log-mel the notes are read from).
    Returns per edit kind the rows and the counts (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    instruments = tuple(i for i in grammar["instruments"] if i in dataset.PITCHED_INSTRUMENTS)
    pairs = pick_pairs(prompts)
    sources = [s for s, _ in pairs]
    waves, source_mels = true_clips(sources)
    captions = [t["caption"] for _, t in pairs]
    call = dict(num_inference_steps=settings["num_inference_steps"], guidance_scale=settings["guidance_scale"],
                scheduler=settings["scheduler"], seed=[seed + i for i in range(len(pairs))])
    duration = float(settings["audio_length_in_s"])
    span = TimeSpan(INPAINT_SPAN[0] * duration, INPAINT_SPAN[1] * duration)
    edits = {"transfer": pipe.transfer(waves, captions, strength=TRANSFER_STRENGTH, **call),
             "inpaint": pipe.inpaint(waves, captions, mask=span, **call)}
    frames = edits["inpaint"].log_mel.shape[1]
    inside = np.zeros(frames, bool)
    inside[int(round(span.start_s / pipe.seconds_per_frame)):int(round(span.end_s / pipe.seconds_per_frame))] = True

    result = {"strength": TRANSFER_STRENGTH, "span_s": [span.start_s, span.end_s], "chance": CHANCE,
              "source_read_back": 0, "pairs": len(pairs)}
    for i, (source, target) in enumerate(pairs):
        want_source = source["attributes"].pitch_classes[0]
        result["source_read_back"] += _pitch(source_mels[i], instruments) == want_source
    for kind, edit in edits.items():
        rows = []
        for i, (source, target) in enumerate(pairs):
            mel = edit.log_mel[i]
            row = {"source": source["name"], "target": target["name"], "caption": target["caption"],
                   "source_pitch": source["attributes"].pitch_classes[0],
                   "target_pitch": target["attributes"].pitch_classes[0]}
            if kind == "transfer":
                row["output_pitch"] = _pitch(mel, instruments)
            else:
                row["output_pitch"] = _pitch(mel[inside], instruments)
                row["outside_pitch"] = _pitch(mel[~inside], instruments)
            stem = f"{kind}_{source['name']}_to_{target['name']}"
            write_wav(out / f"{stem}.wav", edit.waveforms[i], pipe.sampling_rate)
            np.save(out / f"{stem}.mel.npy", mel)
            save_edit_png(out / f"{stem}.png", edit.input_waveform[i], edit.waveforms[i], f"{kind}: {row['caption']}")
            row["files"] = [f"{stem}.wav", f"{stem}.png", f"{stem}.mel.npy"]
            rows.append(row)
        counts = {"followed": sum(r["output_pitch"] == r["target_pitch"] for r in rows),
                  "kept_source": sum(r["output_pitch"] == r["source_pitch"] for r in rows)}
        if kind == "inpaint":
            counts["outside_unchanged"] = sum(r["outside_pitch"] == r["source_pitch"] for r in rows)
        result[kind] = {"rows": rows, **counts}
    return result


def render(demo: Mapping) -> list[str]:
    """The report's section (markdown lines)."""
    n = demo["pairs"]
    lines = ["", "## Editing true clips", "",
             f"{n} true clips, each edited toward a prompt for another note: style transfer (strength "
             f"{demo['strength']}) and inpainting of {demo['span_s'][0]:.2f}-{demo['span_s'][1]:.2f} s. Pitch classes "
             f"read from the generated spectrograms; chance is {demo['chance']:.1%} per clip, and the estimator reads "
             f"the unedited sources right for {demo['source_read_back']} of {n}.", "",
             "| edit | clip -> target prompt | source note | target note | output note | outside the span |",
             "|---|---|---|---|---|---|"]
    for kind in ("transfer", "inpaint"):
        for r in demo[kind]["rows"]:
            lines.append(f"| {kind} | `{r['files'][0]}` | {r['source_pitch']} | {r['target_pitch']} | "
                         f"{r['output_pitch']} | {r.get('outside_pitch', '-')} |")
    t, p = demo["transfer"], demo["inpaint"]
    lines += ["", f"Transfer: the target's note in {t['followed']} of {n} (the source's kept in {t['kept_source']}). "
              f"Inpainting: the target's note inside the span in {p['followed']} of {n}, the source's outside it in "
              f"{p['outside_unchanged']} of {n}. Files: `editing/` (WAV, PNG of input above output, generated log-mel)."]
    return lines


__all__ = ["PAIRS", "TRANSFER_STRENGTH", "INPAINT_SPAN", "pick_pairs", "render", "run_demo"]
