"""Scaling of the voice pipeline: workers, executors, and input length — side by side in one run.

    .venv/bin/python bench/scale.py [--parts workers,length] [--minutes 10,60]

``workers``: the demo's two recordings through fetch → voiceset with 1 local worker, 2 local
workers and 2 Ray workers (fresh workspace each): wall time and speed-up against 1 worker.
``length``: one recording of N minutes (the demo interview repeated), 1 worker: wall time,
real-time factor and the peak memory of the build process, with ratios to the shortest.
Audio cost should grow linearly in time (flat real-time factor) and memory should stay
flat (the issue's bar: the 60-minute peak within 1.5× of the 10-minute one).
Each configuration runs as its own `twin build` process; peak memory is that process tree's
largest resident set (``RUSAGE_CHILDREN``), measured per configuration in a fresh child.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "persona_specs" / "demo"
TWIN = str(Path(sys.executable).parent / "twin")


def spec_for(folder: Path, videos: list[str]) -> Path:
    spec = folder / "spec.yaml"
    vids = ", ".join(videos)
    spec.write_text(f"id: scale-bench\nname: Tamsin Vell\nconsent: {{basis: self, evidence: bench}}\n"
                    f"workspace: ws\nsources: {{videos: [{vids}]}}\nenroll: [{DEMO / 'enroll.ogg'}]\n"
                    "stages: {qualify: {min_dnsmos: 2.3}}\n")
    return spec


def timed_build(spec: Path, *args: str) -> dict:
    """One `twin build` in a child that reports its own children's peak RSS."""
    code = ("import json, resource, subprocess, sys, time; t=time.perf_counter(); "
            "p=subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(json.dumps({'rc': p.returncode, 'seconds': time.perf_counter()-t, "
            "'peak_gb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1e6, 'err': p.stderr[-800:]}))")
    out = subprocess.run([sys.executable, "-c", code, TWIN, "-q", "build", str(spec), "--until", "voiceset", *args],
                         capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise SystemExit(f"build failed: {res['err']}")
    return res


def long_recording(target: Path, minutes: int) -> float:
    src = DEMO / "interview.ogg"
    dur = float(subprocess.run(["soxi", "-D", str(src)], capture_output=True, text=True).stdout)
    reps = max(1, round(minutes * 60 / dur))
    subprocess.run(["sox", *[str(src)] * reps, "-r", "16000", "-c", "1", str(target)], check=True)
    return reps * dur


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="workers,length")
    ap.add_argument("--minutes", default="10,60")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if "workers" in parts:
        rows = []
        for label, extra in (("local, 1 worker", ["--workers", "1"]), ("local, 2 workers", ["--workers", "2"]),
                             ("Ray, 2 workers", ["--workers", "2", "--executor", "ray"])):
            with tempfile.TemporaryDirectory() as d:
                spec = spec_for(Path(d), [str(DEMO / "interview.ogg"), str(DEMO / "panel.ogg")])
                rows.append((label, timed_build(spec, *extra)))
        base = rows[0][1]["seconds"]
        print("Demo interview + panel (3′06″ of audio), fetch → voiceset, fresh workspace each, CPU (2 cores)\n")
        print("| executor | seconds | speed-up vs 1 worker | peak RSS GB |\n|---|---:|---:|---:|")
        for label, r in rows:
            print(f"| {label} | {r['seconds']:.1f} | {base / r['seconds']:.2f}x | {r['peak_gb']:.2f} |")
        print()
    if "length" in parts:
        rows = []
        for minutes in [int(m) for m in args.minutes.split(",")]:
            with tempfile.TemporaryDirectory() as d:
                wav = Path(d) / f"long-{minutes}.wav"
                seconds = long_recording(wav, minutes)
                r = timed_build(spec_for(Path(d), [str(wav)]))
                rows.append((minutes, seconds, r))
        m0, s0, r0 = rows[0]
        print("One long recording (the demo interview repeated), fetch → voiceset, 1 worker, CPU (2 cores)\n")
        print("| input | seconds | real-time factor | vs shortest | peak RSS GB | vs shortest |\n"
              "|---|---:|---:|---:|---:|---:|")
        for minutes, sec, r in rows:
            rtf = r["seconds"] / sec
            print(f"| {sec / 60:.0f} min | {r['seconds']:.0f} | {rtf:.3f} | {rtf / (r0['seconds'] / s0):.2f}x | "
                  f"{r['peak_gb']:.2f} | {r['peak_gb'] / r0['peak_gb']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
