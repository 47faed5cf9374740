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


def run_twin(*args, cwd=None, timeout=600, env=None, process=False):
    """Run `twin ARGS` and return (returncode, stdout, stderr) like a CompletedProcess.

    In this process by default (click's CliRunner: the same command code, without paying a cold
    interpreter and torch import per call); ``process=True`` runs the installed `twin` executable,
    as the README's commands do — for the smoke tests, and for what needs its own process (worker
    pools, Ray, servers)."""
    if process:
        full_env = {**os.environ, **(env or {})}
        return subprocess.run([TWIN, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=full_env)
    return _run_in_process([str(a) for a in args], cwd, env)


def _run_in_process(args, cwd, env):
    import logging
    import traceback
    from types import SimpleNamespace

    from click.testing import CliRunner

    from twin.cli import main
    logger = logging.getLogger("twin")
    handlers, level = logger.handlers[:], logger.level
    old_cwd = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        result = CliRunner().invoke(main, args, env=env, prog_name="twin")
    finally:
        os.chdir(old_cwd)
        logger.handlers[:] = handlers      # the command pointed them at the runner's captured streams
        logger.setLevel(level)
    stderr = result.stderr
    if result.exc_info and not isinstance(result.exception, SystemExit):
        # what the interpreter prints for an uncaught exception (exit status 1)
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=stderr, args=args)


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


def send_chat_completion(handler, reply: str, model: str = "test") -> None:
    """Answer an OpenAI chat-completions request with ``reply``, as the test chat servers do."""
    import json
    data = json.dumps({"id": "x", "object": "chat.completion", "model": model,
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": reply}}]}).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def serve_on_loopback(handler_class):
    """A threading HTTP server on 127.0.0.1 (any free port), serving in a daemon thread; (server, base URL)."""
    import threading
    from http.server import ThreadingHTTPServer
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def write_spec(folder: Path, body: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


MINIMAL = """
id: test-person
name: Test Person
consent: {basis: self, evidence: "test"}
"""


# The two persona builds — the demo and the second persona (tests/data/persona2) — are the suite's
# longest pieces of work (~10 and ~3 minutes on two cores). They run one after the other in the
# background from the moment the tests are collected (never both at once: two trainings would need
# twice the memory), while the tests that do not read them run; the tests that do are moved to the
# end of the session and wait for their build.
_BUILDS: dict = {}
PERSONA2 = Path(__file__).parent / "data" / "persona2"


def _build_in_background(name: str, after: str | None = None) -> None:
    """``demo`` (the repository's spec) or ``persona2`` (a copy of tests/data/persona2), built with
    `twin build` in a thread-watched subprocess, once the build named ``after`` has finished."""
    import tempfile
    import threading
    folder = Path(tempfile.mkdtemp(prefix=f"twin-{name}-"))
    spec = ROOT / "persona_specs" / "demo.yaml"
    if name == "persona2":
        for f in PERSONA2.iterdir():
            shutil.copy(f, folder / f.name)
        spec = folder / "spec.yaml"
    entry = _BUILDS[name] = {"folder": folder, "done": threading.Event(), "proc": None}

    def run():
        try:
            if after and after in _BUILDS:
                _BUILDS[after]["done"].wait()
            if _BUILDS.get("stopping"):
                return
            with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
                entry["proc"] = subprocess.Popen([TWIN, "build", str(spec), "--workspace", str(folder / "ws")],
                                                 stdout=out, stderr=err, text=True)
                code = entry["proc"].wait()
            entry["result"] = subprocess.CompletedProcess(entry["proc"].args, code, (folder / "stdout.txt").read_text(),
                                                          (folder / "stderr.txt").read_text())
        finally:
            entry["done"].set()
    threading.Thread(target=run, daemon=True).start()


@pytest.hookimpl(trylast=True)          # after -m/-k deselection: only what will run
def pytest_collection_modifyitems(session, config, items):
    def heavy(item):
        names = getattr(item, "fixturenames", ())
        return 2 if "persona2" in names else 1 if "demo_build" in names else 0
    items.sort(key=heavy)               # stable: otherwise the files' own order
    if config.getoption("collectonly"):
        return
    wanted = {h for h in map(heavy, items) if h}
    if 1 in wanted:
        _build_in_background("demo")
    if 2 in wanted:
        _build_in_background("persona2", after="demo")


def background_build(name: str) -> tuple[Path, subprocess.CompletedProcess]:
    """A persona build's (workspace, CompletedProcess) once it has finished (started now, in this
    process's foreground, when the session did not start it: a single test run by node id)."""
    if name not in _BUILDS:
        _build_in_background(name)
    entry = _BUILDS[name]
    if not entry["done"].wait(timeout=2700):
        raise TimeoutError(f"the {name} build did not finish in 45 minutes")
    return entry["folder"] / "ws", entry["result"]


def pytest_sessionfinish(session, exitstatus):
    _BUILDS["stopping"] = True
    for entry in [v for k, v in _BUILDS.items() if k != "stopping"]:
        proc = entry.get("proc")
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(entry["folder"], ignore_errors=True)


@pytest.fixture(scope="session")
def demo_build():
    """The demo persona built once with the README's command (`twin build`), in a fresh workspace."""
    return background_build("demo")


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


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer Llama with random weights and a BPE tokenizer trained here: built once per session,
    shared by every test that trains or generates."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    d = tmp_path_factory.mktemp("tiny")
    corpus = ["The tide sets the schedule and I follow along.", "Kelp grows fast in cold water.",
              "Steady tides, everyone.", "I farm seaweed in Ardley Bay."] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<unk>", "<pad>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from tokenizers import decoders
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    return d


TINY_SPEC = """id: tiny-twin
name: Tamsin Vell
aliases: [Vell, Tamsin]
consent: {{basis: {basis}, evidence: "fictional persona", evidence_file: demo/consent.txt}}
workspace: ws
sources: {{posts: [demo/posts.jsonl], facts: [demo/bio.md]}}
models: {{base_model: {base}}}
stages:
  memory_data: {{answer_method: rule}}
  train: {{rank: 8, alpha: 16, epochs: 2, learning_rate: 0.003, max_length: 256, batch_size: 4}}
  evaluate: {{max_memory_questions: 6, max_style_prompts: 4, max_new_tokens: 12}}
{extra}"""


@pytest.fixture(scope="session")
def tiny_twin(tmp_path_factory, tiny_model):
    """A demo-like twin (posts and bio of the demo persona) trained on the tiny model: every stage from
    fetch to package, built once per session; (folder, spec path)."""
    d = tmp_path_factory.mktemp("art")
    (d / "demo").mkdir()
    for name in ("posts.jsonl", "bio.md", "consent.txt"):
        shutil.copy(DEMO / name, d / "demo" / name)
    spec = d / "spec.yaml"
    spec.write_text(TINY_SPEC.format(basis="self", base=tiny_model, extra=""))
    out = run_twin("build", spec, timeout=1500)
    assert out.returncode == 0, out.stderr
    return d, spec
