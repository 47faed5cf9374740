import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "persona_specs" / "demo"
TWIN = str(Path(sys.executable).parent / "twin")


def run_twin(*args, cwd=None, timeout=600, env=None):
    """Run the installed `twin` command; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([TWIN, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def sine_wav(path: Path, seconds: float = 2.0, freq: float = 440.0, rate: int = 16000) -> Path:
    """A real audio file made with sox (distinct content per freq)."""
    subprocess.run(["sox", "-n", "-r", str(rate), "-c", "1", "-b", "16", str(path), "synth", str(seconds), "sine",
                    str(freq), "gain", "-6"], check=True)
    return path


@pytest.fixture
def spec_dir(tmp_path):
    """A folder with a copy of the demo media, for specs written by tests."""
    d = tmp_path / "specs"
    (d / "demo").mkdir(parents=True)
    for name in ("posts.jsonl", "bio.md", "enroll.ogg", "consent.txt", "panel.ogg"):
        shutil.copy(DEMO / name, d / "demo" / name)
    return d


def write_spec(folder: Path, body: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


MINIMAL = """
id: test-person
name: Test Person
consent: {basis: self, evidence: "test"}
"""


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory):
    """The demo persona built once with the README's command (`twin build`), in a fresh workspace."""
    ws = tmp_path_factory.mktemp("demo") / "ws"
    result = run_twin("build", ROOT / "persona_specs" / "demo.yaml", "--workspace", ws, timeout=2700)
    return ws, result


def speak(path: Path, parts, rate: int = 16000) -> list[tuple[float, float, str]]:
    """Synthesize a conversation: parts = [(espeak voice, pitch, text, label)]; returns the true turns."""
    import numpy as np
    import soundfile as sf
    pieces, turns, cursor = [], [], 0.5
    for i, (voice, pitch, text, label) in enumerate(parts):
        raw = path.with_name(f".part{i}.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-a", "90", "-w", str(raw), text], check=True)
        conv = path.with_name(f".part{i}-16k.wav")
        subprocess.run(["sox", "-D", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(conv)], check=True)
        audio, _ = sf.read(conv, dtype="float32")
        idx = np.nonzero(np.abs(audio) > 0.01)[0]
        audio = audio[idx[0]: idx[-1] + 1]
        pieces.append((cursor, audio))
        turns.append((round(cursor, 3), round(cursor + len(audio) / rate, 3), label))
        cursor += len(audio) / rate + 0.7
        raw.unlink()
        conv.unlink()
    mix = np.zeros(int((cursor + 0.5) * rate), dtype="float32")
    for start, audio in pieces:
        i = int(start * rate)
        mix[i:i + len(audio)] += 0.8 * audio
    mix += 0.001 * np.random.default_rng(0).standard_normal(len(mix)).astype("float32")
    sf.write(path, mix, rate, subtype="PCM_16")
    return turns
