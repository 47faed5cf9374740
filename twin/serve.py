"""``twin serve``: an OpenAI-compatible HTTP server for a twin artifact.

``GET /v1/models``, ``POST /v1/chat/completions`` (with ``stream: true`` as server-sent
events) and ``POST /v1/audio/speech`` (text → WAV in the twin's synthetic voice, when the artifact
has one; the disclosure is in the WAV's metadata and the headers). A bearer token is required unless the server is explicitly run open on a loopback
address. Requests are limited in size and in generation length. Every response discloses
that the twin is synthetic: a ``twin_disclosure`` field, an ``X-Twin-Disclosure`` header and,
unless switched off (impossible for restricted twins), the disclosure ahead of the reply text.

The twin recalls before it answers (``twin.memory``): the memories retrieved for the question
go into the system prompt and are listed in the response (``twin_memory``); a question about the
persona with no memory is answered with the abstention; a question longer than the memory's
limit is refused (400). With ``--backend URL`` the model runs on another OpenAI-compatible
server (vLLM with the adapter as a LoRA module, Ollama with the Modelfile): retrieval, the
disclosure and the token check stay here, in front of it.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from .errors import TwinError, UsageError
from .llm import GenParams

log = logging.getLogger("twin.serve")
ROLES = {"system", "user", "assistant"}


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    token: Optional[str] = None
    open_access: bool = False
    max_request_bytes: int = 64 * 1024
    max_tokens: int = 512
    default_max_tokens: int = 128
    disclosure: Optional[str] = None
    disclosure_in_text: bool = True
    model_name: Optional[str] = None
    max_pending: int = 8          # requests generating or waiting; more are answered 429 with Retry-After


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_config(cfg: ServeConfig, manifest: dict) -> ServeConfig:
    """Refuse unsafe settings before anything loads."""
    if cfg.open_access and not is_loopback(cfg.host):
        raise UsageError(f"--open serves without a token, which is allowed on a loopback address only, not {cfg.host}")
    if not cfg.open_access and not cfg.token:
        raise UsageError("no API token: set the token's environment variable (default TWIN_API_KEY), or pass --open "
                         "to serve without one on a loopback address")
    if manifest.get("disclosure_locked") and not cfg.disclosure_in_text:
        raise UsageError(f"the twin of {manifest['persona']['name']} is restricted (consent basis "
                         f"{manifest['consent']['basis']}): its disclosure cannot be switched off")
    cfg.disclosure = cfg.disclosure or manifest["disclosure"]
    if manifest.get("disclosure_locked") and "synthetic" not in cfg.disclosure.lower():
        raise UsageError("a restricted twin's disclosure wording must say that it is synthetic")
    cfg.model_name = cfg.model_name or manifest["persona"]["id"]
    return cfg


class _Error(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _number(req: dict, key: str, default: float, low: float, high: float) -> float:
    v = req.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
        raise _Error(400, f"{key} must be a number from {low} to {high}")
    return float(v)


def make_server(twin, cfg: ServeConfig) -> ThreadingHTTPServer:
    """A ready server (not yet serving) for ``twin`` (a ``twin.artifact.Twin``)."""
    admitted_now = [0]                 # requests generating or waiting (httpd.pending_requests())
    count_lock = threading.Lock()

    def admit() -> bool:
        with count_lock:
            if admitted_now[0] >= max(1, cfg.max_pending):
                return False
            admitted_now[0] += 1
            return True

    def leave() -> None:
        with count_lock:
            admitted_now[0] -= 1

    class Handler(BaseHTTPRequestHandler):
        server_version = "twin-serve"

        def log_message(self, fmt, *args):
            log.info("%s %s", self.address_string(), fmt % args)

        # ------------------------------------------------ plumbing
        def _send_json(self, status: int, body: dict, headers: Optional[dict] = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Twin-Disclosure", cfg.disclosure.encode("ascii", "replace").decode())
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, e: _Error) -> None:
            self._send_json(e.status, {"error": {"message": e.message, "type": e.kind, "code": e.status},
                                       "twin_disclosure": cfg.disclosure},
                            {"Retry-After": "5"} if e.status == 429 else None)

        def _auth(self) -> None:
            if cfg.open_access:
                return
            got = self.headers.get("Authorization", "")
            if not (got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), cfg.token.encode())):
                raise _Error(401, "invalid or missing bearer token", "authentication_error")

        def _body(self) -> dict:
            length = self.headers.get("Content-Length")
            if length is None:
                raise _Error(411, "Content-Length required")
            try:
                n = int(length)
            except ValueError:
                raise _Error(400, "bad Content-Length") from None
            if n < 0:
                raise _Error(400, f"bad Content-Length {n}")
            if n > cfg.max_request_bytes:
                raise _Error(413, f"request of {n} bytes is over the server's limit of {cfg.max_request_bytes}")
            try:
                body = json.loads(self.rfile.read(n) or b"{}")
            except (ValueError, UnicodeDecodeError):
                raise _Error(400, "the request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise _Error(400, f"the request body must be a JSON object, not a {type(body).__name__}")
            return body

        # ------------------------------------------------ routes
        def do_GET(self):
            try:
                self._auth()
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    self._send_json(200, {"object": "list", "data": [
                        {"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "twin",
                         "twin_disclosure": cfg.disclosure}]})
                elif self.path.rstrip("/") in ("", "/health"):
                    self._send_json(200, {"status": "ok", "model": cfg.model_name, "twin_disclosure": cfg.disclosure})
                else:
                    raise _Error(404, f"no route {self.path}")
            except _Error as e:
                self._error(e)

        def do_POST(self):
            admitted = False
            try:
                self._auth()
                route = self.path.rstrip("/")
                if route in ("/v1/audio/speech", "/audio/speech"):
                    req = self._body()
                    text, seed = self._parse_speech(req)
                    admitted = admit()
                    if not admitted:
                        raise _Error(429, f"the server is busy ({cfg.max_pending} requests are generating or "
                                          "waiting); retry later", "rate_limit_error")
                    self._speech(text, seed)
                    return
                if route not in ("/v1/chat/completions", "/chat/completions"):
                    raise _Error(404, f"no route {self.path}")
                req = self._body()
                conv, params, recalled = self._parse(req)
                admitted = admit()
                if not admitted:
                    raise _Error(429, f"the server is busy ({cfg.max_pending} requests are generating or "
                                      "waiting); retry later", "rate_limit_error")
                if req.get("stream"):
                    self._stream(conv, params, recalled)
                else:
                    self._complete(conv, params, recalled)
            except _Error as e:
                self._error(e)
            except (BrokenPipeError, ConnectionResetError):
                log.info("%s went away", self.address_string())
            except Exception as exc:  # noqa: BLE001 - the client gets an answer, the log the details
                log.exception("request failed")
                self._error(_Error(500, f"internal error ({type(exc).__name__})", "server_error"))
            finally:
                if admitted:
                    leave()

        def _parse(self, req: dict):
            if req.get("model") not in (None, cfg.model_name):
                raise _Error(404, f"model {req.get('model')!r} is not served here; this server has {cfg.model_name!r}",
                             "model_not_found")
            msgs = req.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise _Error(400, "messages must be a non-empty list")
            conv = []
            for i, m in enumerate(msgs):
                if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                    raise _Error(400, f"messages[{i}] must have a role ({', '.join(sorted(ROLES))}) and text content")
                conv.append({"role": m["role"], "content": m["content"]})
            if conv[-1]["role"] != "user":
                raise _Error(400, "the last message must be the user's")
            try:
                conv, recalled = twin.prepare(conv)
            except UsageError as exc:
                raise _Error(400, str(exc)) from None
            mt = req.get("max_tokens") or req.get("max_completion_tokens") or cfg.default_max_tokens
            if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
                raise _Error(400, "max_tokens must be a positive integer")
            temperature = _number(req, "temperature", 0.0, 0, 2)
            top_p = _number(req, "top_p", 1.0, 0, 1)
            seed = req.get("seed") or 0
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise _Error(400, "seed must be an integer")
            if not isinstance(req.get("stream", False), bool):
                raise _Error(400, "stream must be true or false")
            params = GenParams(max_new_tokens=min(mt, cfg.max_tokens), temperature=temperature, top_p=top_p,
                               seed=seed)
            return conv, params, recalled

        def _parse_speech(self, req: dict) -> tuple[str, int]:
            """OpenAI's speech request: ``input`` (text), ``model``, ``voice`` (this twin's only voice, any
            name accepted), ``response_format`` (wav only), ``speed`` (1 only)."""
            from .speech import MAX_CHARS
            if req.get("model") not in (None, cfg.model_name, "tts-1", "tts-1-hd", "gpt-4o-mini-tts"):
                raise _Error(404, f"model {req.get('model')!r} is not served here; this server has {cfg.model_name!r}",
                             "model_not_found")
            if not twin.has_voice:
                raise _Error(404, f"this twin has no voice: {twin.no_voice_reason}", "voice_not_found")
            text = req.get("input")
            if not isinstance(text, str) or not text.strip():
                raise _Error(400, "input must be non-empty text")
            if len(text) > MAX_CHARS:
                raise _Error(400, f"input is {len(text)} characters; at most {MAX_CHARS} at once")
            fmt = req.get("response_format", "wav")
            if fmt != "wav":
                raise _Error(400, f"response_format {fmt!r} is not available: this server answers wav")
            speed = req.get("speed", 1)
            if isinstance(speed, bool) or not isinstance(speed, (int, float)) or speed != 1:
                raise _Error(400, "speed must be 1")
            if not isinstance(req.get("voice", ""), str):
                raise _Error(400, "voice must be a name")
            seed = req.get("seed") or 0
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise _Error(400, "seed must be an integer")
            return text, seed

        def _speech(self, text: str, seed: int) -> None:
            from .voice_model import VoiceModelError
            try:
                data = twin.voice().wav(text, seed=seed)
            except (VoiceModelError, UsageError) as exc:
                raise _Error(400, str(exc)) from None
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Twin-Disclosure", cfg.disclosure.encode("ascii", "replace").decode())
            self.send_header("X-Twin-Synthetic-Voice", "true")
            self.end_headers()
            self.wfile.write(data)

        def _prefix(self) -> str:
            return f"[{cfg.disclosure}]\n\n" if cfg.disclosure_in_text else ""

        def _generate(self, conv, params, recalled) -> str:
            if recalled is not None and recalled.abstain is not None:
                return recalled.abstain
            try:
                reply = twin.lm.chat([conv], params)[0]
            except TwinError as exc:           # a backend that failed
                raise _Error(502, f"the model backend failed: {exc}", "backend_error") from None
            return twin.finish(recalled, reply)

        def _complete(self, conv, params, recalled):
            reply = self._generate(conv, params, recalled)
            n_out = twin.lm.count_tokens(reply)
            n_in = sum(twin.lm.count_tokens(m["content"]) for m in conv)
            body = {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": cfg.model_name, "twin_disclosure": cfg.disclosure,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self._prefix() + reply},
                             "finish_reason": "length" if n_out >= params.max_new_tokens else "stop"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}
            if recalled is not None:
                body["twin_memory"] = recalled.as_record()
            self._send_json(200, body)

        def _stream(self, conv, params, recalled):
            whole = recalled is not None and (recalled.abstain is not None or recalled.reality)
            # the abstention, and a reply that must carry the disclosure, are sent whole
            stop = threading.Event()
            pieces = iter([self._generate(conv, params, recalled)]) if whole else \
                twin.lm.stream(conv, params, stop=stop)
            cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("X-Twin-Disclosure", cfg.disclosure.encode("ascii", "replace").decode())
            self.end_headers()

            def event(delta: dict, finish=None):
                chunk = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                         "model": cfg.model_name, "twin_disclosure": cfg.disclosure,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            first = {"role": "assistant", "content": self._prefix()}
            if recalled is not None:
                first["twin_memory"] = recalled.as_record()
            event(first)
            try:
                for piece in pieces:
                    event({"content": piece})
            except (BrokenPipeError, ConnectionResetError):
                stop.set()                 # the client is gone: stop generating for it
                close = getattr(pieces, "close", None)
                if close:
                    close()
                raise
            except Exception as exc:  # noqa: BLE001 - the stream has started: end it, log why
                log.error("generation failed: %s", exc)
            event({}, "stop")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    httpd = ThreadingHTTPServer((cfg.host, cfg.port), Handler)
    httpd.pending_requests = lambda: admitted_now[0]
    return httpd
