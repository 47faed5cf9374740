"""Run every benchmark and write bench/RESULTS.md (with the command that produced it).

    .venv/bin/python bench/run.py        (or: make bench)
"""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [("Voice pipeline: real-time factor, DER, persona purity, kept speech, WER", ["voice.py", "--sweep"]),
           ("LLM generation: batched against one by one", ["generation.py"]),
           ("LoRA training: packed rows against padded batches", ["training.py"]),
           ("Serving: adapter loading and requests under load (needs `make demo` first)", ["serve.py"]),
           ("Scaling: workers, Ray, and 10- against 60-minute inputs", ["scale.py"])]


def main() -> int:
    out = [f"# Benchmark results\n\nProduced by `make bench` (`.venv/bin/python bench/run.py`) on "
           f"{dt.date.today().isoformat()}; every table comes from one run on one machine.\n"]
    for title, args in BENCHES:
        cmd = [sys.executable, str(HERE / args[0]), *args[1:]]
        print(f"== {title}: {' '.join(['bench/' + args[0], *args[1:]])}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        print(proc.stdout)
        out.append(f"## {title}\n\nCommand: `.venv/bin/python bench/{' '.join(args)}`\n\n{proc.stdout}\n")
    (HERE / "RESULTS.md").write_text("\n".join(out))
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
