"""Reproducibility: the lock file of a build, and ``twin build --check``.

The lock (``<workspace>/twin.lock.json``, written after every complete build; ``twin lock``
copies it beside the spec to be committed) records what the build resolved: every fetched
item's id and content hash, the models (reference, kind, version), library versions, seed and
thread settings, and each stage's fingerprint and output hash.

``check`` rebuilds the spec into a fresh workspace — with the original's download cache, so
remote sources are the same bytes — and compares every stage's output hash with the existing
build, naming the first stage (and file) that differs; with a lock file, it also names inputs
or models that drifted from it.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import registry
from .cache import atomic_write_json, hash_obj, read_json, read_jsonl, read_manifest
from .errors import UsageError
from .models import resolve

LOCK = "twin.lock.json"
LIBRARIES = ("torch", "torchaudio", "transformers", "peft", "accelerate", "whisperx", "pyannote.audio", "demucs",
             "faster-whisper", "ctranslate2", "sentence-transformers", "resemblyzer", "speechmos", "yt-dlp", "numpy")


def lock_record(spec, ws_root: Path) -> dict:
    stages = {}
    roles = set()
    for st in registry.stages():
        man = read_manifest(ws_root / st.name)
        if man:
            stages[st.name] = {"fingerprint": man["fingerprint"], "output_hash": man["output_hash"]}
        roles.update(st.model_roles)
    inputs = []
    prov = ws_root / "fetch" / "provenance.jsonl"
    for r in (read_jsonl(prov) if prov.is_file() else []):
        if r.get("status") == "ok":
            inputs.append({k: r.get(k) for k in ("source", "kind", "location", "id", "identity", "sha256", "url",
                                                 "canonical_url", "retrieved_at")})
    models = {}
    for role in sorted(roles):
        m = resolve(role, spec)
        models[role] = {"ref": m.ref, "kind": m.kind, "version": m.version}
    from .runner import lib_versions
    return {"lock_version": 1, "persona": spec.id, "spec": hash_obj(spec.model_dump(mode="json")),
            "seed": spec.seed, "libraries": lib_versions(LIBRARIES),
            "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} | {
                "cpu_count": os.cpu_count()},
            "models": models, "inputs": sorted(inputs, key=lambda r: (r["source"] or "", r["id"] or "")),
            "stages": stages}


def write_lock(spec, ws_root: Path) -> Path:
    atomic_write_json(ws_root / LOCK, lock_record(spec, ws_root))
    return ws_root / LOCK


def lock_path_for(spec) -> Optional[Path]:
    src = spec.source_file
    return src.with_name(src.stem + ".lock.json") if src else None


def drift(lock: dict, now: dict) -> list[str]:
    """What differs between a committed lock and a build: inputs and models (libraries: noted)."""
    out = []
    old_in = {(r["source"], r["id"]): r for r in lock.get("inputs", [])}
    new_in = {(r["source"], r["id"]): r for r in now.get("inputs", [])}
    for key in sorted(set(old_in) | set(new_in), key=str):
        a, b = old_in.get(key), new_in.get(key)
        if a is None:
            out.append(f"input {key[0]} {key[1]}: new since the lock")
        elif b is None:
            out.append(f"input {key[0]} {key[1]} ({a.get('url') or a.get('location')}): in the lock, not fetched now")
        elif a.get("sha256") != b.get("sha256"):
            out.append(f"input {key[0]} {a.get('url') or a.get('location')}: content changed "
                       f"({str(a.get('sha256'))[:12]} → {str(b.get('sha256'))[:12]})")
    for role in sorted(set(lock.get("models", {})) | set(now.get("models", {}))):
        if lock.get("models", {}).get(role) != now.get("models", {}).get(role):
            out.append(f"model {role}: {lock.get('models', {}).get(role)} → {now.get('models', {}).get(role)}")
    for lib in sorted(set(lock.get("libraries", {})) | set(now.get("libraries", {}))):
        if lock.get("libraries", {}).get(lib) != now.get("libraries", {}).get(lib):
            out.append(f"library {lib}: {lock['libraries'].get(lib)} → {now['libraries'].get(lib)}")
    return out


@dataclass
class CheckResult:
    workspace: str
    fresh: str
    compared: list[str] = field(default_factory=list)
    first_difference: Optional[dict] = None
    drift: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first_difference is None and not any(d.startswith(("input", "model")) for d in self.drift)


def _copy_tree_linked(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_or_copy, dirs_exist_ok=True)


def _link_or_copy(s, d):
    try:
        os.link(s, d)
    except OSError:
        shutil.copy2(s, d)


def check(spec, workspace: Optional[str | Path] = None, *, fresh: Optional[str | Path] = None, keep: bool = False,
          workers: int = 1, executor: str = "local", executor_options: Optional[dict] = None,
          progress=None, lock_file: Optional[Path] = None) -> CheckResult:
    from .runner import Runner
    original = Runner(spec, workspace)
    root = original.ws.root
    built = {st.name: m for st in registry.stages() if (m := read_manifest(root / st.name))}
    if not built:
        raise UsageError(f"{root}: nothing is built yet; build first, then --check")
    fresh_root = Path(fresh) if fresh else root.with_name(root.name + ".check")
    if fresh_root.exists():
        shutil.rmtree(fresh_root)
    _copy_tree_linked(root / ".cache" / "fetch", fresh_root / ".cache" / "fetch")
    rebuild = Runner(spec, fresh_root, workers=workers, executor=executor, progress=progress,
                     executor_options=executor_options)
    res = CheckResult(str(root), str(fresh_root))
    outcome = rebuild.build(only=list(built), on_error="keep-going")
    for st in registry.stages():
        if st.name not in built:
            continue
        a, b = built[st.name], read_manifest(fresh_root / st.name)
        res.compared.append(st.name)
        if b is None:
            res.first_difference = {"stage": st.name, "file": None, "why": "the rebuild failed: " + (
                outcome.failed.get(st.name) or "an upstream stage failed")}
            break
        if a["output_hash"] != b["output_hash"]:
            files = sorted(set(a["outputs"]) | set(b["outputs"]))
            diff = next((f for f in files if a["outputs"].get(f) != b["outputs"].get(f)), None)
            res.first_difference = {"stage": st.name, "file": diff,
                                    "why": "only in the rebuild" if diff not in a["outputs"] else
                                    "missing from the rebuild" if diff not in b["outputs"] else "different bytes"}
            break
    lock_file = lock_file or lock_path_for(spec)
    now = lock_record(spec, fresh_root)
    if lock_file and Path(lock_file).is_file():
        res.drift = drift(read_json(lock_file), now)
    if res.ok and not keep:
        shutil.rmtree(fresh_root, ignore_errors=True)
    return res
