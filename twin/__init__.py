"""twin: build a digital twin of a person from public material.

Heavy libraries (torch, whisperx, transformers) are imported only inside the functions
that need them, so ``import twin`` and ``twin --help`` stay fast.
"""
__version__ = "0.1.0"


def load_spec(path, check_files=True):
    from .spec import load_spec as _load
    return _load(path, check_files=check_files)


def build(spec, **options):
    """Build a spec (a path or a loaded Spec); options as for ``Runner`` and ``Runner.build``."""
    from .runner import Runner
    if not hasattr(spec, "sources"):
        spec = load_spec(spec)
    runner_keys = ("workspace", "workers", "executor", "progress", "executor_options")
    runner = Runner(spec, **{k: options.pop(k) for k in runner_keys if k in options})
    return runner.build(**options)


def load(artifact, **options):
    """A packaged twin for programs: ``twin.load("twin.tar.gz").chat([{"role": "user", "content": "Hi"}])``.

    Options: ``base`` (the base model's path, when the manifest's cannot be resolved here),
    ``adapter`` (``stack``, ``combined`` or one adapter), ``device``. The artifact is verified first.
    """
    from .artifact import load as _load
    return _load(artifact, **options)
