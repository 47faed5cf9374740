"""Ad-hoc use without a spec: the same stage code on files and URLs named on the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import registry
from .errors import UsageError


def fetch(inputs: list[str], out: str | Path, kind: Optional[str] = None, opt_out_file: Optional[str] = None,
          progress=None, **settings) -> dict:
    if not inputs:
        raise UsageError("twin fetch: name at least one URL or file")
    for loc in inputs:
        if "://" not in loc and not Path(loc).exists():
            raise UsageError(f"{loc}: no such file (give a local file or an http(s) URL)")
    return registry.get("fetch").adhoc(list(inputs), Path(out), kind=kind,
                                       settings={k: v for k, v in settings.items() if v is not None},
                                       opt_out_file=Path(opt_out_file) if opt_out_file else None, progress=progress)


def _adhoc_spec(files: list[str], out: Path, enroll: list[str], profile: str, consent: str, purpose: str,
                stages: dict | None = None):
    """A real spec for files named on the command line, written to OUT/spec.yaml (inspectable, rerunnable)."""
    import yaml

    from .cache import atomic_write_text
    from .spec import load_spec
    for f in [*files, *enroll]:
        if not Path(f).is_file():
            raise UsageError(f"{f}: no such file")
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "id": "adhoc", "name": "ad-hoc speaker", "profile": profile, "workspace": ".work",
        "consent": {"basis": consent, "evidence": f"stated on the command line ({purpose} --consent {consent}); "
                                                  "no twin artifact is built from this run"},
        "sources": {"videos": [str(Path(f).resolve()) for f in files]},
        "enroll": [str(Path(f).resolve()) for f in enroll],
    }
    if stages:
        doc["stages"] = stages
    path = out / "spec.yaml"
    atomic_write_text(path, f"# written by `twin {purpose}`; `twin build {path}` reruns it\n"
                      + yaml.safe_dump(doc, sort_keys=False))
    return load_spec(path)


def diarize(files: list[str], out: str | Path, enroll: list[str] = (), profile: str = "embedded",
            consent: str = "self", workers: int = 1, progress=None) -> dict:
    """`twin diarize`: separate, diarize and identify local files; one RTTM per input in OUT.

    The persona (the enrolled voice, or the most-talking speaker) is labelled ``persona``,
    the others ``SPEAKER_00``, ``SPEAKER_01``, ...
    """
    from .cache import atomic_write_text, read_json, read_jsonl
    from .runner import Runner
    out = Path(out)
    spec = _adhoc_spec(list(files), out, list(enroll), profile, consent, "diarize")
    runner = Runner(spec, workers=workers, progress=progress)
    runner.build(until="identify")
    ws = runner.ws.root
    videos = read_jsonl(ws / "fetch" / "videos.jsonl")
    by_source = {}
    for rec in read_jsonl(ws / "fetch" / "provenance.jsonl"):
        if rec["kind"] == "videos" and rec.get("id"):
            by_source[rec["id"]] = rec["location"]
    written = []
    for v in videos:
        src = Path(by_source.get(v["id"], v["id"]))
        dst = out / f"{src.stem}.rttm"
        text = (ws / "identify" / f"{v['id']}.rttm").read_text()
        atomic_write_text(dst, text.replace(f"SPEAKER {v['id']} ", f"SPEAKER {src.stem} "))
        written.append(str(dst))
    summary = read_json(ws / "identify" / "identify.json")
    return {"rttm": written, "identify": summary, "workspace": str(ws)}


def voice(files: list[str], out: str | Path, enroll: list[str] = (), profile: str = "embedded",
          consent: str = "self", workers: int = 1, progress=None, qualify: dict | None = None) -> dict:
    """`twin voice`: the whole voice pipeline on local files; the dataset exports land in OUT.

    ``OUT/manifest.jsonl`` has, per kept clip, the source file, its start and end second in
    that file, the text and the scores.
    """
    import shutil

    from .cache import read_json
    from .runner import Runner
    out = Path(out)
    qualify = {k: v for k, v in (qualify or {}).items() if v is not None}
    spec = _adhoc_spec(list(files), out, list(enroll), profile, consent, "voice",
                       {"qualify": qualify} if qualify else None)
    runner = Runner(spec, workers=workers, progress=progress)
    runner.build(until="voiceset")
    built = runner.ws.root / "voiceset"
    for entry in sorted(built.iterdir()):
        if entry.name.startswith("_"):
            continue
        dst = out / entry.name
        if dst.is_dir():
            shutil.rmtree(dst)
        if entry.is_dir():
            shutil.copytree(entry, dst)
        else:
            shutil.copyfile(entry, dst)
    return {"summary": read_json(built / "summary.json"), "out": str(out)}


def qa(facts_file: str, out: str | Path, name: str, profile: str = "embedded", llm: str | None = None,
       server_model: str = "default", answer_method: str = "auto", consent: str = "self", progress=None) -> dict:
    """`twin qa`: the memory dataset of one text file, as ``OUT/memory.jsonl`` (one chat sample per
    line, with the chunk it came from)."""
    import re

    import yaml

    from .cache import atomic_write_jsonl, atomic_write_text, read_json, read_jsonl
    from .runner import Runner
    from .spec import load_spec
    if not Path(facts_file).is_file():
        raise UsageError(f"{facts_file}: no such file")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "persona"
    slug = slug if len(slug) > 1 else f"{slug}-x"
    doc = {"id": slug, "name": name, "profile": profile, "workspace": ".work",
           "consent": {"basis": consent, "evidence": f"stated on the command line (qa --consent {consent})"},
           "sources": {"facts": [str(Path(facts_file).resolve())]},
           "stages": {"memory_data": {"answer_method": answer_method, "server_model": server_model}}}
    if llm:
        doc["models"] = {"llm": llm}
    path = out / "spec.yaml"
    atomic_write_text(path, f"# written by `twin qa`; `twin build {path} --until memory_data` reruns it\n"
                      + yaml.safe_dump(doc, sort_keys=False))
    runner = Runner(load_spec(path), progress=progress)
    runner.build(only=["fetch", "memory_data"])
    built = runner.ws.root / "memory_data"
    samples = [dict(x, split="train") for x in read_jsonl(built / "train.jsonl")] + \
        [dict(x, split="eval") for x in read_jsonl(built / "eval.jsonl")]
    atomic_write_jsonl(out / "memory.jsonl", samples)
    return {"samples": len(samples), "stats": read_json(built / "stats.json"), "out": str(out / "memory.jsonl")}
