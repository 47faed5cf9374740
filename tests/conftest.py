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
