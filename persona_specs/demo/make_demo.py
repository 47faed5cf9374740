#!/usr/bin/env python3
"""Generate the demo persona's media with espeak-ng and sox, with exact ground truth.

Tamsin Vell is fictional: a kelp farmer and marine biologist from the invented harbour
town of Port Ardley. Nothing here describes a real person.

Writes, next to this script:
  interview.ogg  + interview.rttm + interview.transcript.jsonl   (interviewer, Tamsin, a guest;
                 a music bed under the opening and one answer, a noisy stretch, one overlap)
  panel.ogg      + panel.rttm     + panel.transcript.jsonl       (a second recording, other voices)
  enroll.ogg     Tamsin alone, sentences not in the interview
  posts.jsonl    her posts (and a few reposts, which are not her words)
  bio.md         a third-person factual bio (>= 40 facts)

Run from anywhere: python persona_specs/demo/make_demo.py  (needs espeak-ng, sox, ffmpeg, numpy, soundfile).
The output is deterministic for given versions of espeak-ng and ffmpeg.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
RATE = 16000

# name → espeak-ng voice, pitch, speed, amplitude. Chosen together: Tamsin's voice is one tiny.en reads
# well (WER 0.13 on her sentences alone, against 0.25 for the en-gb-x-rp+f4 voice used before), and every
# voice is far enough from hers for the speaker encoder (cosine of centroids <= 0.76) and for the segmentation
# model's turn boundaries (a critic voice closer to hers smeared her turns; see git history of this table).
VOICES = {
    "interviewer": ("en-us+m3", 38, 165, 90),
    "tamsin": ("en-us+f5", 60, 150, 90),
    "guest": ("en-gb-scotland+m7", 30, 160, 90),
    # panel: different voices
    "host": ("en-029+m2", 45, 170, 90),
    "critic": ("en+Annie", 50, 160, 90),
}

INTERVIEW = [
    ("interviewer", "Welcome back to Harbour Lights, the show about people who work with the sea. "
                    "Today I am joined by kelp farmer and marine biologist Tamsin Vell, and by her neighbour, "
                    "the boat builder Callum Reid.", {"music": True}),
    ("tamsin", "Thanks for having me. Honestly, it is lovely to be somewhere dry for once.", {}),
    ("guest", "Glad to be here. I build the boats she keeps breaking.", {}),
    ("interviewer", "Tamsin, how did you end up farming seaweed?", {}),
    ("tamsin", "Well, I studied marine biology in Aberdeen, and my thesis was on sugar kelp. "
               "After that I could not stop thinking about it. The tide sets the schedule, and I just follow along.",
     {}),
    ("interviewer", "And the farm itself, how big is it now?", {}),
    ("tamsin", "We have twelve hectares of long lines in the bay. Honestly, it started as two ropes and a lot of "
               "stubbornness. Now we harvest about forty tonnes a year.", {"overlap": ("guest", "Forty!", 2.2)}),
    ("guest", "I remember the first raft. It sank in a week.", {}),
    ("tamsin", "It did not sink, Callum. It was resting on the bottom. Those are different things.", {}),
    ("interviewer", "What does a normal day look like for you?", {}),
    ("tamsin", "Up before the light, check the lines, check the weather, then the boat. "
               "In winter we seed the ropes, in spring we harvest. Kelp grows fast when the water is cold.",
     {"noise": True}),
    ("interviewer", "Why kelp, though? Why not fish?", {}),
    ("tamsin", "Because kelp cleans the water while it grows. It needs no feed and no fresh water. "
               "Honestly, it is the most generous crop I know. Friends, the sea does most of the work.", {}),
    ("interviewer", "Callum, what is it like working next to her?", {}),
    ("guest", "Loud. She sings to the seaweed. I am not joking.", {}),
    ("tamsin", "It is good for morale. Mine, not the kelp's.", {"music": True}),
    ("interviewer", "You won an award last year, didn't you?", {}),
    ("tamsin", "The Blue Shore Prize, yes. It went to the whole crew, really. "
               "We used the money to build a small hatchery for seedlings.", {}),
    ("interviewer", "What would you tell someone who wants to start a farm like yours?", {}),
    ("tamsin", "Start small, talk to the fishermen first, and respect the tide tables. "
               "The sea forgives slowly, so learn from other people's mistakes before your own.", {}),
    ("interviewer", "Tamsin Vell and Callum Reid, thank you both.", {}),
    ("tamsin", "Thank you. Steady tides, everyone.", {}),
]

PANEL = [
    ("host", "This is the Coastal Table, and with me is the writer Ines Okafor, and Tamsin Vell from "
             "Port Ardley.", {}),
    ("critic", "Hello, happy to be here.", {}),
    ("host", "Tamsin, people say seaweed is the food of the future. Is that true?", {}),
    ("tamsin", "Honestly, it is the food of the past too. People on this coast have eaten dulse for centuries. "
               "We just forgot how.", {}),
    ("critic", "I tried her kelp pesto last summer. It tasted like a clean beach, in a good way.", {}),
    ("tamsin", "That is the nicest review we have ever had. We make it with sugar kelp, walnuts and a lot of "
               "lemon.", {}),
    ("host", "And what is next for the farm?", {}),
    ("tamsin", "More hatchery space, and a school programme. Children should know what grows in the bay.", {}),
]

ENROLL = ("My name is Tamsin Vell. I grow seaweed on long ropes in a cold, bright bay. "
          "Every morning I listen to the shipping forecast before I decide anything.")


def tts(text: str, voice: str, tmp: Path) -> np.ndarray:
    name, pitch, speed, amp = VOICES[voice]
    raw = tmp / "raw.wav"
    out = tmp / "out.wav"
    subprocess.run(["espeak-ng", "-v", name, "-p", str(pitch), "-s", str(speed), "-a", str(amp),
                    "-w", str(raw), text], check=True)
    subprocess.run(["sox", "-D", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out), "gain", "-n", "-3"],
                   check=True)
    audio, rate = sf.read(out, dtype="float32")
    assert rate == RATE
    idx = np.nonzero(np.abs(audio) > 0.01)[0]
    return audio[idx[0]: idx[-1] + 1] if len(idx) else audio


def music(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A soft chord progression with a little rhythm: music-like, not speech-like."""
    t = np.arange(int(seconds * RATE)) / RATE
    chords = [(220.0, 277.2, 329.6), (196.0, 246.9, 293.7), (174.6, 220.0, 261.6), (196.0, 246.9, 311.1)]
    out = np.zeros_like(t)
    for i, chord in enumerate(chords * int(seconds // 8 + 1)):
        start, end = i * 2.0, (i + 1) * 2.0
        seg = (t >= start) & (t < end)
        if not seg.any():
            break
        env = np.exp(-((t[seg] - start) % 0.5) * 3.0)
        for f in chord:
            out[seg] += np.sin(2 * np.pi * f * t[seg]) * env / len(chord)
    out += 0.02 * rng.standard_normal(len(t))
    return out.astype("float32")


def build_scene(script, tmp: Path, rng: np.random.Generator, gap=(0.5, 0.9)):
    pieces = []  # (start, audio, speaker, text, flags)
    cursor = 0.6
    turns = []
    for speaker, text, flags in script:
        audio = tts(text, speaker, tmp)
        start = cursor
        dur = len(audio) / RATE
        pieces.append((start, audio, 0.8))
        turn = {"speaker": speaker, "start": round(start, 3), "end": round(start + dur, 3), "text": text}
        if flags.get("noise"):
            turn["noisy"] = True
        if flags.get("music"):
            turn["music"] = True
        turns.append(turn)
        if "overlap" in flags:
            who, words, offset = flags["overlap"]
            inter = tts(words, who, tmp)
            ostart = start + offset
            pieces.append((ostart, inter, 0.8))
            turns.append({"speaker": who, "start": round(ostart, 3), "end": round(ostart + len(inter) / RATE, 3),
                          "text": words, "overlap": True})
        cursor = start + dur + float(rng.uniform(*gap))
    total = cursor + 0.6
    mix = np.zeros(int(total * RATE) + 1, dtype="float32")
    for start, audio, gain in pieces:
        i = int(round(start * RATE))
        mix[i:i + len(audio)] += gain * audio
    for turn in turns:
        i, j = int(turn["start"] * RATE), int(turn["end"] * RATE)
        if turn.get("music"):
            a, b = max(0, i - RATE), min(len(mix), j + RATE)
            mix[a:b] += 0.12 * music((b - a) / RATE, rng)[: b - a]
        if turn.get("noisy"):
            noise = rng.standard_normal(j - i).astype("float32")
            noise = np.convolve(noise, np.ones(4) / 4, mode="same")  # a little coloured
            mix[i:j] += 0.15 * noise
    mix += 0.0015 * rng.standard_normal(len(mix)).astype("float32")  # room tone
    peak = np.max(np.abs(mix))
    if peak > 0.97:
        mix *= 0.97 / peak
    turns.sort(key=lambda t: t["start"])
    return mix, turns


def encode(audio: np.ndarray, path: Path, tmp: Path) -> None:
    wav = tmp / "enc.wav"
    sf.write(wav, audio, RATE, subtype="PCM_16")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), "-c:a", "libopus", "-b:a", "32k",
                    "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact", str(path)], check=True)


def write_truth(name: str, turns: list[dict]) -> None:
    lines = [f"SPEAKER {name} 1 {t['start']:.3f} {t['end'] - t['start']:.3f} <NA> <NA> {t['speaker']} <NA> <NA>"
             for t in turns]
    (HERE / f"{name}.rttm").write_text("\n".join(lines) + "\n")
    with open(HERE / f"{name}.transcript.jsonl", "w") as f:
        for t in turns:
            f.write(json.dumps(t, sort_keys=True) + "\n")


def main() -> int:
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, script in (("interview", INTERVIEW), ("panel", PANEL)):
            mix, turns = build_scene(script, tmp, rng)
            encode(mix, HERE / f"{name}.ogg", tmp)
            write_truth(name, turns)
            print(f"{name}: {len(mix) / RATE:.1f} s, {len(turns)} turns")
        enroll = tts(ENROLL, "tamsin", tmp)
        enroll = np.concatenate([np.zeros(RATE // 4, "float32"), enroll, np.zeros(RATE // 4, "float32")])
        encode(enroll * 0.8, HERE / "enroll.ogg", tmp)
        print(f"enroll: {len(enroll) / RATE:.1f} s")
    from demo_text import BIO, POSTS  # noqa: E402 - the written material lives beside this script
    with open(HERE / "posts.jsonl", "w") as f:
        for p in POSTS:
            f.write(json.dumps(p, sort_keys=True, ensure_ascii=False) + "\n")
    (HERE / "bio.md").write_text(BIO)
    print(f"posts: {len(POSTS)}; bio: {BIO.count('.')} sentences")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
