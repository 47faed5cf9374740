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
