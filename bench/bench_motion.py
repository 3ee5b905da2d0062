"""Audio-to-motion benchmarks: real-time ratio on this machine, and the held-out evaluation table.

    python bench/bench_motion.py speed                          # shipped model, shared speech files
    python bench/bench_motion.py table --val ../shared/corpus_val --model previous=OLD.safetensors --model new=NEW.safetensors \
        [--heldout DATASET_DIR=MODEL_TRAINED_WITHOUT_IT ...]
    python bench/bench_motion.py sync --corpus DIR              # the mouth-sync figure's ranking on real pairs
    python bench/bench_motion.py live [--model NAME=PATH ...]   # streamed vs offline motion, shared speech files
    python bench/bench_motion.py languages [--model NAME=PATH ...] [--utterances 140]   # synthetic speech per language
    python bench/bench_motion.py finetune --dataset DIR [--dataset DIR ...] [--model PATH]   # fine-tune CPU time
    python bench/bench_motion.py lag --corpus DIR [--exclude PATTERN ...] [--model PATH]   # how late the model comes
    python bench/bench_motion.py finetune-settings --dataset DIR [--dataset DIR ...] [--variant NAME:KEY=V,KEY=V ...]
    python bench/bench_motion.py sync-null --corpus DIR [--corpus DIR ...]   # what unrelated audio reaches
    python bench/bench_motion.py offsets --corpus DIR [--include PATTERN ...]   # how right a clip's offset is

speed: real-time ratio = seconds of audio / seconds of compute, for the whole of predict_motion (resampling, all
audio features incl. the phoneme recogniser, the network, interpolation to 25 fps) and for the network alone;
> 1 is faster than real time. Threads: torch's default unless --threads.
live: mouth-opening correlation of nerf-talk serve's motion (motion.stream.stream_motion: 48 kHz in 20 ms chunks,
the live defaults) with predict_motion's on the same file, per model.
languages: fresh synthetic utterances (synth.make_utterance, seeds from 100000: never trained on), grouped by
language: opening correlation (1 s high-pass) with the openness of the exact phoneme timings (the viseme track
through visemes.OPENNESS), and the share of /p b m/ frames (bilabial viseme >= 0.5) with the lips closed (opening under
the utterance's speech median, as metrics.bilabial_closure counts it); then 3 s of near-silence (noise at -70 dBFS):
the largest mouth opening and frame-to-frame change (0 = closed and still). A model with a lead baked in
(meta lead_baked_frames, motion.lead) moves its lips that many frames before the phonemes; "at the model's lead"
scores it against the phoneme timings read as far ahead.
lag: how late each model's mouth opening comes against the real lips of every dataset under --corpus
(motion.lead.model_lag; positive = late), then the median per speaker (the corpus's speakers.json) and the median of
those: measured on speakers the model was not trained on, the frames to bake into it (scripts/bake_motion_lead.py).
sync-null: the level motion.lead.offset_from_motion trusts. Every pair of one clip's predicted mouth opening with
another clip's real lips (unrelated audio), cut to 5, 10, 20 and 40 s: the 99th percentile of the peak's margin
over lags of +-SYNC_MAX_LAG_S, beside the true pairs' median margin, and the percentile times sqrt(seconds)
(lead.NULL_MARGIN_1S).
offsets: how right the offset the model measures on a short clip is, by its confidence, where the truth is known:
each dataset under --corpus (matching --include) is first measured whole (lead.offset_from_motion on the model's
opening from its audio.wav; kept only if the confidence is 2 or more: its reference), then cut into pieces of 6, 10
and 14 s starting every --every seconds (15), whose audio is moved 0 frames (half of them) or 1-4 frames either way;
the piece's measured lag should be the reference plus the move. Per confidence band: how often it is within 0.5 and
1 frame; per threshold (the audio step's MODEL_MIN_CONFIDENCE), the mean error left if the pieces above it were
corrected and the others not, for all pieces and for those not moved.
finetune-settings: per-person fine-tune settings compared on clips the model never saw: each --dataset is split in
halves, the first fine-tuned and its adapter chosen as `nerf-talk fit` does (evaluate's "+finetune" path) with each
--variant of motion.finetune.FinetuneConfig ("now:" = its defaults; default: the settings tried on 2026-12-07), the
second scored (opening correlation, 1 s high-pass).
finetune: the per-person fine-tune (motion.finetune) on the datasets joined end to end (to make a long clip, e.g.
three one-minute GRID files for 3 minutes): CPU seconds (process time, all threads) and its report.
table: the speaker-held-out table. Every dataset under --val (speakers no model saw; unreadable ones are skipped with
a line) is scored with every --model (first the previous, last the new one), the new one + adapter and the baselines;
each --heldout pairs a training dataset with a model trained without it (scripts/train_default_motion.py --holdout)
and scores that model, its adapter and the baselines. The first --fit-fraction of each clip fits the adapter and the
baselines; everything is scored on the rest (columns: nerf_talk.motion.evaluate). With --align, the clip's sound/lip
offset is first measured on the fit part by the last model and taken out of the whole clip where it is sure
(motion.lead.offset_from_motion): how the clips would score with their recordings' offsets corrected. Below the
rows, the mean over the --val speakers per method, and on how many the last model beats the energy-driven jaw.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPEECH = ROOT.parent / "shared" / "data" / "speech"


def speed(args) -> dict:
    import torch

    from nerf_talk import audio_features as af
    from nerf_talk import media
    from nerf_talk.motion import features as mf
    from nerf_talk.motion.model import MotionModel
    from nerf_talk.motion.predict import load_default_model, predict_motion, run_network

    if args.threads:
        torch.set_num_threads(args.threads)
    model = MotionModel.load(args.model[-1].rpartition("=")[2]) if args.model else load_default_model()
    files = sorted(SPEECH.glob("*.wav"))
    audio = np.concatenate([media.read_audio(f, 16000) for f in files]) if files else \
        np.random.default_rng(0).standard_normal(16000 * 30).astype(np.float32) * 0.1
    secs = len(audio) / 16000
    predict_motion(model, audio[:16000 * 2], 16000, 25.0)  # warm-up: loads the recogniser
    t = time.perf_counter()
    out = predict_motion(model, audio, 16000, 25.0)
    total = time.perf_counter() - t
    x = mf.input_features(af.compute_features(audio, 25.0))
    t = time.perf_counter()
    run_network(model, x)
    net = time.perf_counter() - t
    res = {"audio_s": round(secs, 2), "frames": len(out["blink"]), "threads": torch.get_num_threads(),
           "predict_motion_s": round(total, 3), "realtime_ratio": round(secs / total, 1),
           "network_s": round(net, 4), "network_realtime_ratio": round(secs / net, 1)}
    print(json.dumps(res, indent=1))
    return res


COLS = ("opening_corr", "landmark_err", "msf", "msf_shifted", "pbm_closed", "opening_std_ratio", "silence_open",
        "silence_move")


def _row(clip: str, method: str, r: dict) -> str:
    return f"| {clip} | {method} | " + " | ".join(f"{r[c]:.3f}" for c in COLS) + " |"


def table(args) -> dict:
    from nerf_talk.errors import UserError
    from nerf_talk.motion import evaluate as ev
    from nerf_talk.motion.corpus import find_datasets
    from nerf_talk.motion.model import MotionModel

    if not args.model:
        raise SystemExit("give at least one --model NAME=PATH")
    models = _named_models(args.model)
    jobs = []  # (label, dataset dir, {name: model})
    for d in find_datasets(args.val) if args.val else []:
        jobs.append(("val", d, models))
    for spec in args.heldout:
        d, _, path = spec.partition("=")
        jobs.append(("heldout", Path(d), {"held-out generic": MotionModel.load(path)}))
    print(f"fit on the first {args.fit_fraction:.0%} of each clip, scored on the rest; models: "
          + ", ".join(f"{n} ({m.meta['trained_on']['real_minutes']:.1f} min real, "
                      f"{m.meta['trained_on']['synthetic_utterances']} synthetic)" for n, m in models.items()))
    print("| clip | method | " + " | ".join(COLS) + " |")
    print("|---" * (len(COLS) + 2) + "|")
    results = {"val": {}, "heldout": {}}
    notes = []
    for label, d, ms in jobs:
        for n, m in ms.items():
            if d.name in m.meta.get("trained_on", {}).get("real", []):
                raise SystemExit(f"model {n} was trained on {d.name}: not a held-out evaluation")
        try:
            res = ev.evaluate_clip(ms, d, args.fit_fraction, align=args.align)
        except UserError as e:
            print(f"| {d.name} | skipped: {str(e).splitlines()[0]} |")
            continue
        info = res.pop("_info")
        notes.append(f"{d.name}: fine-tune " + (
            f"used, held-out tail opening correlation {info['finetune']['tail_opening_corr']['generic']:.3f} -> "
            f"{info['finetune']['tail_opening_corr']['finetuned']:.3f}, {info['finetune']['cpu_seconds']:.0f} s CPU"
            if info["finetune"]["used"] else f"not used: {info['finetune']['reason']}")
            + f"; then the {info['chosen_adapter']['kind']} adapter: {info['chosen_adapter']['reason']}"
            + ("" if not args.align else _offset_note(info["av_offset_frames"])))
        results[label][d.name] = res
        for method, r in res.items():
            print(_row(d.name, method, r))
    print("\n" + "\n".join(notes))
    val = results["val"]
    if val:
        methods = list(next(iter(val.values())))
        print(f"\nmean over {len(val)} validation speakers:")
        print("| clip | method | " + " | ".join(COLS) + " |")
        print("|---" * (len(COLS) + 2) + "|")
        for method in methods:
            print(_row("mean", method, {c: float(np.nanmean([val[k][method][c] for k in val])) for c in COLS}))
        last = list(models)[-1]
        wins = [k for k in val if val[k][last]["opening_corr"] > val[k]["energy_jaw"]["opening_corr"]]
        print(f"{last} beats energy_jaw on opening_corr for {len(wins)} of {len(val)} validation speakers"
              + (f" (not: {', '.join(sorted(set(val) - set(wins)))})" if len(wins) < len(val) else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def _one_corpus(args) -> str:
    if len(args.corpus) != 1:
        raise SystemExit(f"{args.what} needs exactly one --corpus DIR")
    return args.corpus[0]


def _offset_note(offset: dict) -> str:
    return (f"; sound/lip offset on the fit part {offset['measured']:+.2f} frames (confidence "
            f"{offset['confidence']:.2f}): " + ("taken out" if offset["frames"] else "left"))


def _named_models(specs: list[str]) -> dict:
    from nerf_talk.motion.model import MotionModel
    from nerf_talk.motion.predict import load_default_model

    if not specs:
        return {"shipped": load_default_model()}
    return {n: MotionModel.load(p) for n, _, p in (spec.rpartition("=") for spec in specs)}


def live(args) -> dict:
    from nerf_talk import media
    from nerf_talk.motion import metrics as mx
    from nerf_talk.motion.predict import predict_motion
    from nerf_talk.motion.stream import stream_motion

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rate = 48000
    res = {}
    print("| model | clip | opening correlation, streamed vs offline |")
    print("|---|---|---|")
    for name, model in _named_models(args.model).items():
        for f in sorted(SPEECH.glob("*.wav")):
            audio = media.read_audio(f, rate)
            off = predict_motion(model, audio, rate, 25.0)["lower_face_motion"]
            on = stream_motion(model, audio, rate, 25.0)["lower_face_motion"]
            n = min(len(off), len(on))
            pts = model.basis.points
            r = mx.correlation(mx.mouth_opening(off[:n], pts), mx.mouth_opening(on[:n], pts))
            res[f"{name}/{f.stem}"] = r
            print(f"| {name} | {f.stem} | {r:.3f} |")
    return res


def languages(args) -> dict:
    from nerf_talk import audio_features as af
    from nerf_talk.motion import metrics as mx
    from nerf_talk.motion import synth
    from nerf_talk.motion import visemes as vz
    from nerf_talk.motion.lead import read_ahead
    from nerf_talk.motion.predict import motion_coeffs

    models = _named_models(args.model)
    rows: dict = {}
    for seed in range(100000, 100000 + args.utterances):
        feats, vis, info = synth.make_utterance(seed)
        expected = mx.highpass(vis @ vz.OPENNESS, 25.0)
        bil = vis[:, vz.V["bilabial"]] >= 0.5
        voiced = vis[:, vz.V["sil"]] < 0.5
        for name, m in models.items():
            o = mx.mouth_opening(m.basis.decode(motion_coeffs(m, feats)[0]), m.basis.points)
            r = rows.setdefault((info["lang"], name), {"corr": [], "corr_lead": [], "closed": [], "frames": 0})
            r["corr"].append(mx.correlation(mx.highpass(o, 25.0), expected))
            lead = float(m.meta.get("lead_baked_frames", 0.0))
            r["corr_lead"].append(mx.correlation(mx.highpass(o, 25.0), read_ahead(expected, lead)))
            if bil.any() and voiced.any():
                r["closed"] += list(o[bil] < np.median(o[voiced]))
                r["frames"] += int(bil.sum())
    print("| language | model | utterances | opening corr. with exact phonemes | ... at the model's lead | "
          "/p b m/ frames closed |")
    print("|---|---|---|---|---|---|")
    out = {}
    for (lang, name), r in sorted(rows.items()):
        out[f"{lang}/{name}"] = {"corr": float(np.mean(r["corr"])), "corr_at_lead": float(np.mean(r["corr_lead"])),
                                 "closed": float(np.mean(r["closed"])), "utterances": len(r["corr"]),
                                 "bilabial_frames": r["frames"]}
        print(f"| {lang} | {name} | {len(r['corr'])} | {np.mean(r['corr']):.3f} | {np.mean(r['corr_lead']):.3f} | "
              f"{np.mean(r['closed']):.3f} ({r['frames']}) |")
    for name in models:
        agg = [v for k, v in out.items() if k.endswith("/" + name)]
        print(f"| all | {name} | {sum(a['utterances'] for a in agg)} | {np.mean([a['corr'] for a in agg]):.3f} | "
              f"{np.mean([a['corr_at_lead'] for a in agg]):.3f} | "
              f"{np.average([a['closed'] for a in agg], weights=[a['bilabial_frames'] for a in agg]):.3f} |")
    quiet = (np.random.default_rng(0).standard_normal(3 * af.SAMPLE_RATE) * 10 ** (-70 / 20)).astype(np.float32)
    feats = af.compute_features(quiet, 25.0)
    for name, m in models.items():
        o = mx.mouth_opening(m.basis.decode(motion_coeffs(m, feats)[0]), m.basis.points)
        out[f"silence/{name}"] = {"max_opening": float(np.abs(o).max()), "max_change": float(np.abs(np.diff(o)).max())}
        print(f"silence, {name}: largest |opening| {np.abs(o).max():.2e}, largest frame-to-frame change "
              f"{np.abs(np.diff(o)).max():.2e} (face sizes)")
    return out


def finetune_speed(args) -> dict:
    import torch

    from nerf_talk.motion import corpus as cp
    from nerf_talk.motion.finetune import finetune

    torch.set_num_threads(args.threads or 1)
    model = list(_named_models(args.model).values())[-1]
    srcs = [cp.load_real(Path(d), model.vocab) for d in args.dataset]
    feats = {k: np.concatenate([np.asarray(s.features[k]) for s in srcs]) for k in srcs[0].features}
    motion = np.concatenate([np.asarray(s.motion) for s in srcs])
    from preprocess.dataset import Dataset

    points = list(Dataset(args.dataset[0]).step_result("face_motion")["lower_face_points"])
    _, report = finetune(model, feats, motion, points)
    report.pop("config")
    report.update(clip_s=round(len(motion) / 25.0, 1), threads=torch.get_num_threads())
    print(json.dumps(report, indent=1))
    return report


def sync(args) -> dict:
    from nerf_talk import audio_features as af
    from nerf_talk.motion import evaluate as ev
    from nerf_talk.motion.corpus import find_datasets

    clips = {p.name: p for p in find_datasets(_one_corpus(args))}
    r = ev.sync_ranking(clips, af.phoneme_vocabulary())
    print("| clip | MSF true pair | best shifted (+-3,5,10 frames) | best mismatched | true ranks first |")
    print("|---|---|---|---|---|")
    for n in clips:
        print(f"| {n} | {r['true'][n]:.3f} | {max(r['shifted'][n]):.3f} | {max(r['mismatched'][n]):.3f} | "
              f"{r['true_beats_all'][n]} |")
    return r


OLD_STOP = "max_steps=400,patience=4"  # the fine-tune's early stop before 2026-12-07
FINETUNE_VARIANTS = (f"before:{OLD_STOP}", f"lr1e-3:{OLD_STOP},lr=1e-3", f"anchor0.01:{OLD_STOP},anchor=0.01",
                     f"anchor1:{OLD_STOP},anchor=1.0", f"win200:{OLD_STOP},window=200", "now:",
                     "now+anchor0.01:anchor=0.01", "now+lr1e-3:lr=1e-3")


def finetune_settings(args) -> dict:
    import dataclasses

    import torch

    from nerf_talk.motion import corpus as cp
    from nerf_talk.motion import metrics as mx
    from nerf_talk.motion.evaluate import fit_path
    from nerf_talk.motion.finetune import FinetuneConfig
    from nerf_talk.motion.model import MODEL_FPS

    torch.set_num_threads(args.threads or 1)
    model = list(_named_models(args.model).values())[-1]
    variants = {}
    for spec in args.variant or FINETUNE_VARIANTS:
        name, _, settings = spec.partition(":")
        kv = dict(item.split("=", 1) for item in settings.split(",") if item)
        fields = {f.name: f.type for f in dataclasses.fields(FinetuneConfig)}
        variants[name] = FinetuneConfig(**{k: (int if fields[k] in ("int", int) else float)(v) for k, v in kv.items()})
    scores: dict[str, list[float]] = {v: [] for v in variants}
    print("| clip | " + " | ".join(variants) + " |")
    print("|---" * (len(variants) + 1) + "|")
    for d in args.dataset:
        src = cp.load_real(Path(d), model.vocab)
        feats = {k: np.asarray(v) for k, v in src.features.items()}
        motion = np.asarray(src.motion, np.float32)
        k = len(motion) // 2
        real = mx.highpass(mx.mouth_opening(motion[k:], model.basis.points), MODEL_FPS)
        row = []
        for name, cfg in variants.items():
            pred = fit_path(model, feats, motion, k, cfg)[0][k:]
            r = mx.correlation(mx.highpass(mx.mouth_opening(pred, model.basis.points), MODEL_FPS), real)
            scores[name].append(r)
            row.append(f"{r:.3f}")
        print(f"| {Path(d).name} | " + " | ".join(row) + " |", flush=True)
    means = {v: float(np.mean(x)) for v, x in scores.items()}
    print("| **mean** | " + " | ".join(f"{m:.3f}" for m in means.values()) + " |")
    return means


def sync_null(args) -> dict:
    import itertools

    from nerf_talk.av_sync import peak_lag
    from nerf_talk.motion import corpus as cp
    from nerf_talk.motion import metrics as mx
    from nerf_talk.motion.lead import NULL_MARGIN_1S, SYNC_MAX_LAG_S, lag_curve
    from nerf_talk.motion.model import MODEL_FPS
    from nerf_talk.motion.predict import motion_coeffs

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = list(_named_models(args.model).values())[-1]
    clips = {}
    for corpus in args.corpus:
        for d in cp.find_datasets(corpus):
            try:
                src = cp.load_real(d, model.vocab)
            except Exception as e:  # noqa: BLE001 - an unreadable dataset is reported and skipped
                print(f"skipped {d.name}: {str(e).splitlines()[0]}")
                continue
            feats = {k: np.asarray(v) for k, v in src.features.items()}
            clips[d.name] = (mx.mouth_opening(model.basis.decode(motion_coeffs(model, feats)[0]), model.basis.points),
                             mx.mouth_opening(np.asarray(src.motion), model.basis.points))
    max_lag = int(round(SYNC_MAX_LAG_S * MODEL_FPS))

    def margin(pred, real):
        return peak_lag(*lag_curve(pred, real, max_lag))[1]

    out = {}
    print(f"{len(clips)} clips; lead.NULL_MARGIN_1S = {NULL_MARGIN_1S}")
    print("| seconds | unrelated pairs | their margin, 99th percentile | x sqrt(seconds) | true pairs | their median |")
    print("|---|---|---|---|---|---|")
    for seconds in (5, 10, 20, 40):
        n = int(seconds * MODEL_FPS)
        null = [margin(clips[a][0][:n], clips[b][1][:n]) for a, b in itertools.permutations(clips, 2)
                if min(len(clips[a][0]), len(clips[b][1])) >= n]
        true = [margin(p[:n], r[:n]) for p, r in clips.values() if len(p) >= n]
        if not null:
            continue
        p99 = float(np.percentile(null, 99))
        out[seconds] = {"pairs": len(null), "p99": p99, "true_median": float(np.median(true))}
        print(f"| {seconds} | {len(null)} | {p99:.3f} | {p99 * np.sqrt(seconds):.2f} | {len(true)} | "
              f"{np.median(true):.3f} |")
    return out


def lag(args) -> dict:
    from nerf_talk.motion import corpus as cp
    from nerf_talk.motion.lead import model_lag

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    corpus = _one_corpus(args)
    speakers = cp.read_speakers(corpus)
    dirs = [d for d in cp.find_datasets(corpus) if not any(fnmatch.fnmatchcase(d.name, p) for p in args.exclude)]
    out = {}
    for name, model in _named_models(args.model).items():
        per_speaker: dict[str, list[float]] = {}
        print(f"{name}: | clip | lag (frames, + = late) | corr at the lag | margin |")
        for d in dirs:
            try:
                r = model_lag(model, d)
            except Exception as e:  # noqa: BLE001 - an unreadable dataset is reported and skipped
                print(f"| {d.name} | skipped: {str(e).splitlines()[0]} |")
                continue
            per_speaker.setdefault(cp.speaker_of(d.name, speakers), []).append(r["lag"])
            print(f"| {d.name} | {r['lag']:+.2f} | {r['corr']:.3f} | {r['margin']:.3f} |")
        medians = {s: float(np.median(v)) for s, v in per_speaker.items()}
        overall = float(np.median(list(medians.values()))) if medians else float("nan")
        print(f"{name}: per-speaker medians " + ", ".join(f"{s} {v:+.2f}" for s, v in sorted(medians.items())))
        print(f"{name}: median over {len(medians)} speakers {overall:+.2f} frames (lead already baked in: "
              f"{model.meta.get('lead_baked_frames', 0.0):g})")
        out[name] = {"speakers": medians, "median": overall}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


def offsets(args) -> dict:
    from nerf_talk.media import AUDIO_RATE, read_audio
    from nerf_talk.motion import corpus as cp
    from nerf_talk.motion.lead import offset_by_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = list(_named_models(args.model).values())[-1]
    rng = np.random.default_rng(0)
    rows = []  # (moved, reference, measured, confidence, frames)
    for d in cp.find_datasets(_one_corpus(args)):
        if args.include and not any(fnmatch.fnmatchcase(d.name, p) for p in args.include):
            continue
        fps = float(json.loads((d / "manifest.json").read_text())["fps"])
        audio, real = read_audio(d / "audio.wav"), np.load(d / "mouth_opening.npy").astype(np.float64)

        def measure(a, r):  # (frames, confidence), as the audio step measures it
            seconds, confidence = offset_by_model(model, a, r, fps)
            return seconds * fps, confidence

        ref, conf = measure(audio, real)
        if conf < 2:
            print(f"{d.name}: reference not sure ({conf:.2f}), skipped")
            continue
        per_frame = AUDIO_RATE / fps
        for start in range(0, len(real) - int(15 * fps), int(args.every * fps)):
            n = int(rng.choice([6, 10, 14]) * fps)
            moved = 0 if rng.random() < 0.5 else int(rng.choice([-4, -3, -2, -1, 1, 2, 3, 4]))
            lo, hi = int(round((start - moved) * per_frame)), int(round((start - moved + n) * per_frame))
            piece = audio[max(lo, 0): hi]
            if lo < 0:  # sound that comes later than the first frame: silence before it
                piece = np.concatenate([np.zeros(-lo, np.float32), piece])
            got, c = measure(piece, real[start: start + n])
            rows.append((moved, ref, got, c, n))
        print(f"{d.name}: reference {ref:+.2f} frames (confidence {conf:.2f}), {len(rows)} pieces so far", flush=True)
    r = np.array(rows, dtype=np.float64)
    if not len(r):
        raise SystemExit("no dataset with a sure reference")
    truth, got, conf = r[:, 0] + r[:, 1], r[:, 2], r[:, 3]
    err, still = np.abs(got - truth), r[:, 0] == 0
    print(f"{len(r)} pieces of 6-14 s ({still.sum()} not moved)")
    print("| confidence | pieces | within 0.5 frame | within 1 frame | mean error (frames) |")
    print("|---|---|---|---|---|")
    for lo, hi in ((0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0), (1.0, 1.5), (1.5, np.inf)):
        k = (conf >= lo) & (conf < hi)
        if k.any():
            print(f"| {lo:g}-{hi:g} | {k.sum()} | {np.mean(err[k] < 0.5):.2f} | {np.mean(err[k] < 1):.2f} | "
                  f"{err[k].mean():.2f} |")
    print("| corrected from confidence | share corrected | mean error left, all | over 1.5 frames | not moved: mean "
          "error left | over 1.5 frames |")
    print("|---|---|---|---|---|---|")
    out = {"pieces": len(r), "thresholds": {}}
    for th in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, np.inf):
        left = np.abs(truth - np.where(conf >= th, got, 0.0))
        out["thresholds"][str(th)] = {"corrected": float(np.mean(conf >= th)), "error": float(left.mean()),
                                      "error_still": float(left[still].mean())}
        print(f"| {th:g} | {np.mean(conf >= th):.2f} | {left.mean():.2f} | {np.mean(left > 1.5):.2f} | "
              f"{left[still].mean():.2f} | {np.mean(left[still] > 1.5):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("speed", "table", "sync", "live", "languages", "finetune", "lag",
                                     "finetune-settings", "sync-null", "offsets"))
    ap.add_argument("--utterances", type=int, default=140, help="languages: synthetic utterances to score")
    ap.add_argument("--model", action="append", default=[],
                    help="speed: a model path (default: the shipped one); table: NAME=PATH, repeatable")
    ap.add_argument("--corpus", action="append", default=[],
                    help="sync, lag: a folder of datasets; sync-null: repeatable")
    ap.add_argument("--include", action="append", default=[], metavar="PATTERN",
                    help="offsets: only the datasets whose name matches (default: all)")
    ap.add_argument("--every", type=float, default=15.0,
                    help="offsets: seconds between the pieces' starts (under 14 s, pieces overlap)")
    ap.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                    help="lag: leave out datasets whose name matches (e.g. the model's own training speakers)")
    ap.add_argument("--val", default=None, help="table: a folder of datasets of speakers no model was trained on")
    ap.add_argument("--heldout", action="append", default=[], metavar="DATASET_DIR=MODEL",
                    help="table: a training dataset and a model trained without it (repeatable)")
    ap.add_argument("--dataset", action="append", default=[],
                    help="finetune: datasets joined into one clip; finetune-settings: clips scored one by one")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="finetune-settings: a FinetuneConfig variant (repeatable; default: the ones tried)")
    ap.add_argument("--json", default=None, help="table, lag, offsets: also write the figures here")
    ap.add_argument("--fit-fraction", type=float, default=0.5)
    ap.add_argument("--align", action="store_true",
                    help="table: take out of each clip the sound/lip offset the last model measures on its fit part "
                         "(where sure) before fitting and scoring")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    {"speed": speed, "table": table, "sync": sync, "live": live, "languages": languages, "finetune": finetune_speed,
     "lag": lag, "finetune-settings": finetune_settings, "sync-null": sync_null, "offsets": offsets}[a.what](a)


if __name__ == "__main__":
    main()
