"""qualify: cut the persona's turns into clips and keep only clean solo speech.

Clips: the persona's segments (except those diarization found overlapped: they bound clips
like another speaker's turn), merged across short pauses when nobody else speaks in between,
split at pauses (never mid-word: only where the voice is silent) when longer than
``max_seconds``, trimmed to speech. Each clip is measured — SNR (separation stems when a
model separated them, WADA-SNR otherwise), DNSMOS SIG/BAK/OVRL, overlap with any other
speaker, clipping, loudness — and kept only if it passes every threshold. Kept clips are
loudness-normalised and written as ``clips/<id>.wav``; every clip, kept or not, is a line in
``clips.jsonl`` with its scores and its reasons.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from twin.audio import Recording
from twin.cache import atomic_write_jsonl, read_jsonl
from twin.errors import StageError
from twin.registry import register
from twin.spec import Strict
from twin.stage import Stage

RATE = 16000


class Settings(Strict):
    min_seconds: float = Field(3.0, gt=0, description="shortest clip kept")
    max_seconds: float = Field(15.0, gt=0, description="longer turns are split at pauses")
    merge_gap: float = Field(0.6, ge=0, description="merge the persona's pieces across pauses up to this long (s)")
    min_pause: float = Field(0.15, gt=0, description="a silence this long is a place to split (s)")
    pad: float = Field(0.08, ge=0, description="silence kept before and after speech (s)")
    min_snr_db: float = Field(20.0, description="SNR below this is rejected")
    min_dnsmos: float = Field(3.0, ge=1, le=5, description="DNSMOS OVRL below this is rejected")
    max_clipping: float = Field(0.001, ge=0, le=1, description="share of clipped samples above this is rejected")
    overlap_margin: float = Field(0.2, ge=0, description="another speaker this close to a clip counts as overlap (s)")
    audio_source: str = Field("auto", pattern="^(auto|vocals|mixture)$",
                              description="auto: separated vocals after demucs, the recording itself after "
                                          "dsp/none (a spectral gate's artefacts cost more than it removes)")
    target_lufs: float = Field(-23.0, ge=-40, le=-10, description="kept clips are normalised to this loudness")

    @model_validator(mode="after")
    def _lengths(self):
        if self.min_seconds >= self.max_seconds:
            raise ValueError("min_seconds must be below max_seconds")
        return self


# ----------------------------------------------------------------- clip cutting

def _frame_energy(x: np.ndarray, hop: int = 160) -> np.ndarray:
    n = len(x) // hop
    if n == 0:
        return np.zeros(0)
    return np.sqrt(np.mean(x[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))


def silence_mask(x: np.ndarray, hop: int = 160) -> np.ndarray:
    """Per 10 ms frame: True where the voice is silent (below 10% of its typical level, −40 dB floor)."""
    e = _frame_energy(x, hop)
    if not len(e):
        return np.zeros(0, dtype=bool)
    speech_level = np.percentile(e, 90)
    return e < max(speech_level * 0.1, 10 ** (-40 / 20) * speech_level, 1e-5)


def cut_clips(turns: list[tuple[float, float]], audio, s: dict, others: list[tuple[float, float]]):
    """Persona turns → clip spans (start, end) in seconds. ``audio``: a ``twin.audio.Recording``
    (only the turns are read)."""
    # merge across short pauses with no other speaker inside
    merged: list[list[float]] = []
    for a, b in sorted(turns):
        if merged and a - merged[-1][1] <= s["merge_gap"] and not any(
                oa < a and ob > merged[-1][1] for oa, ob in others):
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    hop = 160
    spans = []
    for a, b in merged:
        seg = audio.read(int(a * RATE), int(b * RATE))
        sil = silence_mask(seg, hop)
        # trim to speech
        speech = np.nonzero(~sil)[0]
        if not len(speech):
            continue
        a2 = a + max(speech[0] * hop / RATE - s["pad"], 0)
        b2 = a + min((speech[-1] + 1) * hop / RATE + s["pad"], len(seg) / RATE)
        # pause centres: runs of silence at least min_pause long
        pauses = []
        run_start = None
        for i, v in enumerate(np.append(sil, False)):
            if v and run_start is None:
                run_start = i
            elif not v and run_start is not None:
                if (i - run_start) * hop / RATE >= s["min_pause"]:
                    pauses.append(a + (run_start + i) / 2 * hop / RATE)
                run_start = None
        start = a2
        while b2 - start > s["max_seconds"]:
            cands = [p for p in pauses if start + s["min_seconds"] <= p <= start + s["max_seconds"]]
            if not cands:
                break  # no pause to split at: the turn is left whole and rejected as too long
            cut = max(cands)
            spans.append((start, cut))
            start = cut
        spans.append((start, b2))
    return spans


# ----------------------------------------------------------------- per recording

def qualify_recording(item: dict, params: dict) -> dict:
    import soundfile as sf

    from twin.quality import (clipping_ratio, dnsmos, loudness_lufs, normalise_loudness, stem_snr,
                              wada_snr)
    s = params["settings"]
    source = item["audio_source"]
    turns = [(x["start"], x["end"]) for x in item["persona"]]
    others = [(x["start"], x["end"]) for x in item["others"]]
    out = Path(params["out"])
    clips = []
    # streamed: only the persona's turns and clips are read, never the whole recording
    with Recording(item["mixture"]) as mixture_rec, Recording(item["vocals"]) as vocals_rec, \
            Recording(item["residual"]) as residual_rec:
        audio_rec = vocals_rec if source == "vocals" else mixture_rec
        for n, (a, b) in enumerate(cut_clips(turns, audio_rec, s, others)):
            i, j = int(a * RATE), int(b * RATE)
            x = audio_rec.read(i, j)
            mixture = x if audio_rec is mixture_rec else mixture_rec.read(i, j)
            overlap = sum(max(0.0, min(b + s["overlap_margin"], ob) - max(a - s["overlap_margin"], oa))
                          for oa, ob in others)
            snr_stem = stem_snr(vocals_rec.read(i, j), residual_rec.read(i, j)) if item["stems_trusted"] else None
            snr_blind = wada_snr(mixture)
            snr = snr_stem if snr_stem is not None else snr_blind
            dur = len(x) / RATE
            mos = dnsmos(x) if dur >= 1.0 else {"sig": None, "bak": None, "ovrl": None, "p808": None}
            clip = {"id": f"{item['id']}-{n:04d}", "recording": item["id"], "start": round(a, 3),
                    "end": round(b, 3), "duration": round(dur, 3),
                    "snr_db": round(snr, 2) if np.isfinite(snr) else None,
                    "snr_stem_db": round(snr_stem, 2) if snr_stem is not None else None,
                    "wada_snr_db": round(snr_blind, 2) if np.isfinite(snr_blind) else None,
                    "dnsmos": mos, "overlap_seconds": round(overlap, 3),
                    "clipping": round(clipping_ratio(mixture), 5),
                    "lufs": round(loudness_lufs(x), 2) if dur >= 0.4 else None, "audio_source": source}
            reasons = []
            if dur < s["min_seconds"]:
                reasons.append("too short")
            if dur > s["max_seconds"]:
                reasons.append("too long (no pause to split at)")
            if overlap > 0:
                reasons.append("overlaps another speaker")
            if clip["snr_db"] is None or clip["snr_db"] < s["min_snr_db"]:
                reasons.append("low SNR")
            if mos["ovrl"] is None or mos["ovrl"] < s["min_dnsmos"]:
                reasons.append("low DNSMOS")
            if clip["clipping"] > s["max_clipping"]:
                reasons.append("clipped")
            clip["kept"] = not reasons
            clip["reasons"] = reasons
            if clip["kept"]:
                y = normalise_loudness(x, s["target_lufs"])
                path = out / "clips" / f"{clip['id']}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(".tmp-" + path.name)
                sf.write(str(tmp), y, RATE, subtype="PCM_16")
                tmp.replace(path)
                clip["path"] = f"clips/{clip['id']}.wav"
            clips.append(clip)
    return {"clips": clips}


@register
class Qualify(Stage):
    name = "qualify"
    version = "1"
    summary = "cut the persona's turns into clips; keep clean solo speech (SNR, DNSMOS, overlap, clipping)"
    reads = ("fetch", "separate", "diarize", "identify")
    model_roles = ("dnsmos",)
    libraries = ("speechmos", "pyloudnorm", "onnxruntime")
    Settings = Settings

    def run(self, ctx) -> dict:
        sep = {r["id"]: r for r in read_jsonl(ctx.input("separate") / "separation.jsonl")}
        segments = read_jsonl(ctx.input("diarize") / "segments.jsonl")
        persona = {(x["recording"], x["start"], x["end"]) for x in read_jsonl(ctx.input("identify") /
                                                                                  "persona_segments.jsonl")}
        videos = read_jsonl(ctx.input("fetch") / "videos.jsonl")
        items = []
        for v in videos:
            r = sep.get(v["id"])
            if r is None:
                continue
            mine = [x for x in segments if x["recording"] == v["id"]]
            p = [x for x in mine if (x["recording"], x["start"], x["end"]) in persona]
            if not p:
                continue
            source = ctx.settings.audio_source
            if source == "auto":
                source = "vocals" if r["backend"] == "demucs" else "mixture"
            items.append({"id": v["id"], "mixture": str(ctx.input("fetch") / v["path"]),
                          "vocals": str(ctx.input("separate") / r["vocals"]),
                          "residual": str(ctx.input("separate") / r["residual"]),
                          "stems_trusted": r["backend"] == "demucs", "audio_source": source,
                          # the persona's overlapped pieces are not clip material: like another
                          # speaker's turn they bound clips (a clean turn is not lost to the piece after it)
                          "persona": [x for x in p if not x.get("overlap")],
                          "others": [x for x in mine if (x["recording"], x["start"], x["end"]) not in persona
                                     or x.get("overlap")]})
        results = ctx.map(qualify_recording, items, key=lambda it: it["id"],
                          params={"out": str(ctx.out), "settings": ctx.settings.model_dump()}, step="qualify")
        clips = [c for _, ok, v in results if ok for c in v["clips"]]
        if items and not any(ok for _, ok, _ in results):
            raise StageError(self.name, f"no recording could be qualified: {ctx.failures[0]['reason']}")
        atomic_write_jsonl(ctx.out / "clips.jsonl", clips)
        kept = [c for c in clips if c["kept"]]
        reasons: dict[str, int] = {}
        for c in clips:
            for r in c["reasons"]:
                reasons[r] = reasons.get(r, 0) + 1
        if clips and not kept:
            ctx.log.warning("no clip passed the thresholds: %s", reasons)
        return {"clips": len(clips), "kept": len(kept), "kept_seconds": round(sum(c["duration"] for c in kept), 2),
                "rejected_by_reason": reasons}
