"""Voice stages on the demo persona: real-time factor of each stage and DER / purity / recall per recording.

    .venv/bin/python bench/voice.py [--workspace DIR] [--sweep]

Builds the demo (fetch → identify) into a fresh workspace, reads each stage's manifest for its
time, and scores diarization and persona identification against the committed ground truth.
All numbers in one table come from one run on this machine. ``--sweep`` adds the clustering
threshold sensitivity (DER per threshold, same embeddings).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twin.cache import read_json, read_jsonl  # noqa: E402
from twin.metrics import der, load_rttm, persona_purity_recall  # noqa: E402
from twin.runner import Runner  # noqa: E402
from twin.spec import load_spec  # noqa: E402

STAGES = ["fetch", "separate", "diarize", "identify"]


def run(workspace: Path, sweep: bool) -> str:
    spec = load_spec(ROOT / "persona_specs" / "demo.yaml")
    t0 = time.perf_counter()
    Runner(spec, workspace).build(until="identify", force=STAGES)
    wall = time.perf_counter() - t0
    videos = read_jsonl(workspace / "fetch" / "videos.jsonl")
    audio_s = sum(v["duration"] for v in videos)
    lines = [f"machine: {platform.machine()}, {platform.python_version()}, CPU only; audio: {audio_s:.1f} s "
             f"in {len(videos)} recordings", "", "| stage | seconds | real-time factor |", "|---|---:|---:|"]
    total = 0.0
    for st in STAGES:
        sec = read_json(workspace / st / "_manifest.json")["timings"]["seconds"]
        total += sec
        lines.append(f"| {st} | {sec:.2f} | {sec / audio_s:.4f} |")
    lines.append(f"| all four (inside stages) | {total:.2f} | {total / audio_s:.4f} |")
    lines.append(f"| whole build (wall, incl. start-up) | {wall:.2f} | {wall / audio_s:.4f} |")
    lines.append(f"\norchestration overhead (wall − time inside stages) / time inside stages: "
                 f"{(wall - total) / total:.3f}\n")
    lines += ["| recording | DER (collar 0.25) | missed | false alarm | confusion | persona found | similarity "
              "| purity | recall |", "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    ident = read_json(workspace / "identify" / "identify.json")["recordings"]
    persona = read_jsonl(workspace / "identify" / "persona_segments.jsonl")
    for v in videos:
        name, rid = v["title"], v["id"]
        ref = load_rttm(ROOT / "persona_specs" / "demo" / f"{name}.rttm")[name]
        hyp = load_rttm(workspace / "diarize" / f"{rid}.rttm")[rid]
        d = der(ref, hyp)
        pr = persona_purity_recall(ref, [(x["start"], x["end"]) for x in persona if x["recording"] == rid], "tamsin")
        i = ident[rid]
        lines.append(f"| {name} | {d['der']:.3f} | {d['missed']:.3f} | {d['false_alarm']:.3f} | {d['confusion']:.3f} "
                     f"| {'yes' if i['found'] else 'no'} | {i['similarity']:.3f} | {pr['purity']:.4f} "
                     f"| {pr['recall']:.3f} |")
    if sweep:
        lines += ["", "clustering threshold sensitivity (same embeddings):", "",
                  "| threshold | " + " | ".join(f"{v['title']} DER (speakers)" for v in videos) + " |",
                  "|---:|" + "---:|" * len(videos)]
        import soundfile as sf

        from stages.diarize import Settings, global_speakers, local_speakers
        from twin.models import resolve
        seg, enc = resolve("segmentation", spec).location, resolve("speaker_embedding", spec).location
        sep = {r["id"]: r for r in read_jsonl(workspace / "separate" / "separation.jsonl")}
        locals_ = {}
        for v in videos:
            audio = sf.read(workspace / "separate" / sep[v["id"]]["vocals"], dtype="float32")[0]
            resid = sf.read(workspace / "separate" / sep[v["id"]]["residual"], dtype="float32")[0]
            locals_[v["id"]] = (local_speakers(audio, resid, seg, enc, Settings().model_dump()), len(audio) / 16000)
        for th in (0.15, 0.18, 0.20, 0.22, 0.25, 0.30, 0.35):
            cells = []
            for v in videos:
                local, dur = locals_[v["id"]]
                segs, spk = global_speakers(local, dur, Settings(threshold=th).model_dump())
                ref = load_rttm(ROOT / "persona_specs" / "demo" / f"{v['title']}.rttm")[v["title"]]
                cells.append(f"{der(ref, [(x['start'], x['end'], x['speaker']) for x in segs])['der']:.3f} ({len(spk)})")
            lines.append(f"| {th:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path)
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    import warnings
    warnings.filterwarnings("ignore")
    if args.workspace:
        print(run(args.workspace, args.sweep))
    else:
        with tempfile.TemporaryDirectory() as d:
            print(run(Path(d) / "ws", args.sweep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
