"""The twin as a model: the base LLM with the style and memory adapters stacked (or the combined one).

Used by the evaluate stage (base and twin side by side: ``with lm.base_only():``), by
``twin serve`` and by ``twin.load(artifact)`` for programs. Generation is greedy unless a
temperature is given; adapters are loaded with plain peft from standard PEFT folders.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Optional, Sequence

from .errors import UsageError
from .llm import Conversation, GenParams, generate_chat


class TwinLM:
    def __init__(self, base_source: str, adapters: Sequence[Path], *, revision: Optional[str] = None,
                 device: Optional[str] = None, batch_size: int = 8, token: Optional[str] = None):
        from peft import PeftModel

        from .models import device as pick_device
        from .loading import load_base
        if not adapters:
            raise UsageError("a twin needs at least one adapter folder")
        self.device = pick_device(device)
        self.tok, base = load_base(base_source, revision, self.device, token=token)
        self.names = [Path(a).name for a in adapters]
        model = PeftModel.from_pretrained(base, str(adapters[0]), adapter_name=self.names[0])
        for name, path in zip(self.names[1:], adapters[1:]):
            model.load_adapter(str(path), adapter_name=name)
        model.base_model.set_adapter(self.names)
        model.eval()
        self.model = model
        self.batch_size = batch_size
        # re-entrant: ``chat`` (and token counting) inside ``base_only`` runs on the base model
        # instead of deadlocking; other threads still wait for the whole block
        self.lock = threading.RLock()

    def chat(self, conversations: list[Conversation], params: GenParams = GenParams(), streamer=None,
             stop: Optional[threading.Event] = None) -> list[str]:
        with self.lock:
            return generate_chat(self.model, self.tok, conversations, params, self.batch_size, streamer=streamer,
                                 stop=stop)

    def stream(self, conv: Conversation, params: GenParams = GenParams(), stop: Optional[threading.Event] = None):
        """The reply to one conversation, piece by piece as it is generated; setting ``stop`` ends the
        generation at the next token (a client that went away)."""
        from transformers import TextIteratorStreamer
        streamer = TextIteratorStreamer(self.tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
        failure: list[BaseException] = []

        def work():
            try:
                self.chat([conv], params, streamer=streamer, stop=stop)
            except Exception as exc:  # noqa: BLE001 - raised in the reading thread below
                failure.append(exc)
                streamer.end()
        threading.Thread(target=work, daemon=True).start()
        for piece in streamer:
            if piece:
                yield piece
        if failure:
            raise failure[0]

    @contextlib.contextmanager
    def base_only(self):
        """The base model, adapters switched off (for side-by-side evaluation)."""
        with self.lock, self.model.disable_adapter():
            yield self

    def loss(self, samples: list[dict]) -> Optional[float]:
        """Mean cross-entropy per assistant token of chat samples (``messages``); takes no lock, so it
        also runs inside ``base_only``."""
        from .training import eval_loss, tokenize_sample
        toks = [t for t in (tokenize_sample(self.tok, s["messages"], 1024) for s in samples) if t]
        return eval_loss(self.model, toks, self.tok.pad_token_id, self.batch_size)

    def count_tokens(self, text: str) -> int:
        # the fast tokenizer is not thread-safe ("Already borrowed" under concurrent requests): take the lock
        with self.lock:
            return len(self.tok(text, add_special_tokens=False)["input_ids"])
