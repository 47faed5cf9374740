"""fetch: the spec's sources → local, deduplicated, hashed raw material with provenance.

Outputs (under the stage folder):
  media/<id>.wav            audio in the working format (16-bit mono PCM), <id> = content hash
  media/<id>.info.json      yt-dlp's metadata, when the source was a URL
  media/<id>.<lang>.vtt     manual subtitles, when the source had them
  videos.jsonl              one line per audio item: id, path, duration, title, source
  posts.jsonl               one line per post: id, text, created_at, reply_to_text, source
  facts/<id>.md + facts.jsonl  factual text (Markdown with ## sections) and its index
  provenance.jsonl          one line per item, fetched or failed, with its reason

Downloads are cached under ``<workspace>/.cache/fetch`` with yt-dlp's download archive,
so a rebuild after a spec change downloads only what is new.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import glob
import re
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from pydantic import Field

from twin.cache import (atomic_copy, atomic_write_json, atomic_write_jsonl, atomic_write_text, hash_file,
                        read_json, read_jsonl)
from twin.errors import StageError, UsageError
from twin.net import guarded
from twin.registry import register
from twin.spec import Strict, is_local_url
from twin.stage import Stage

log = logging.getLogger("twin.fetch")
# yt-dlp extractors whose ids are not a site's stable video ids
POSITIONAL_EXTRACTORS = (None, "generic", "html5")
# why an input fails a locked fetch (the stage fails on these, not on ordinary download failures)
LOCK_CHANGED = "content changed since the lock"
LOCK_GONE = "in the lock, not fetched now"


class Settings(Strict):
    sample_rate: int = Field(16000, ge=8000, le=48000, description="working sample rate of normalised audio (Hz)")
    max_items_per_source: int = Field(50, ge=1, description="cap for playlists, channels and feeds")
    retries: int = Field(3, ge=0, le=10, description="retries per download, with exponential backoff")
    min_interval: float = Field(0.0, ge=0, description="seconds between two requests (rate limit)")
    rate_limit: Optional[str] = Field(None, description="max download rate for media, e.g. '2M'")
    cookies: Optional[str] = Field(None, description="a Netscape cookies file for sites that need a login")
    subtitles: bool = Field(True, description="keep manual subtitles when a video has them")
    strict: bool = Field(False, description="fail the stage when any item fails (default: only when none works)")
    max_media_mb: float = Field(2048, gt=0, description="largest media file downloaded or read (MiB); larger "
                                                          "ones are skipped with that reason")
    max_text_mb: float = Field(50, gt=0, description="largest text file or page read (MiB)")
    fail_when_empty: bool = Field(True, description="fail the stage when nothing usable was fetched (`twin fetch` "
                                                    "keeps the records of such a run and exits 1 itself)")
    locked: bool = Field(False, description="fetch exactly the items of the spec's committed lock file "
                                            "(`twin lock`; `twin build --locked`): nothing new, and an item whose "
                                            "content changed or is gone fails the stage")


# ----------------------------------------------------------------- helpers

def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_url(url: str) -> str:
    """Lower-case scheme and host, no fragment, no default port, no tracking parameters."""
    p = urlparse(url)
    host = (p.hostname or "").lower()
    if p.port and not ((p.scheme == "http" and p.port == 80) or (p.scheme == "https" and p.port == 443)):
        host = f"{host}:{p.port}"
    query = "&".join(q for q in p.query.split("&") if q and not q.lower().startswith(("utm_", "fbclid=", "si=")))
    path = p.path or "/"
    return f"{p.scheme.lower()}://{host}{path}" + (f"?{query}" if query else "")


def _opt_out_match(opt: dict, *, url: Optional[str] = None, texts: tuple = (), channels: tuple = ()) -> Optional[str]:
    """The opt-out entry that applies, or None. ``opt`` has names, channels, domains (lower-case)."""
    if url:
        host = (urlparse(url).hostname or "").lower()
        for d in opt["domains"]:
            if host == d or host.endswith("." + d):
                return f"domain {d}"
    for c in channels:
        if c and c.lower() in opt["channels"]:
            return f"channel {c}"
    for t in texts:
        low = (t or "").lower()
        for n in opt["names"]:
            if n and re.search(r"(?<!\w)" + re.escape(n) + r"(?!\w)", low):
                return f"name {n}"
    return None


def _identity(info: dict, page: str) -> str:
    """A downloaded video's identity, for dedup and the lock: the site's own video id; the generic
    and HTML5 extractors' ids are file names or positions on a page, so there the media URL itself
    is the identity."""
    if info.get("extractor") not in POSITIONAL_EXTRACTORS:
        return f"{info.get('extractor')}:{info.get('id')}"
    return canonical_url(info.get("url") or f"{page}#{info.get('id')}")


def lock_key(rec: dict) -> str:
    """How the lock names an input: a video by its identity, anything else by its URL or path."""
    return rec.get("identity") or rec.get("url") or rec["location"]


def _record(item: dict, **fields) -> dict:
    rec = {"kind": item["kind"], "source": item["label"], "location": item["location"],
           "licence": item.get("licence"), "status": "ok"}
    rec.update(fields)
    return rec


def _local_path(item: dict) -> Path:
    loc = item["location"]
    if loc.startswith("file://"):
        return Path(urlparse(loc).path)
    p = Path(loc).expanduser()
    return p if p.is_absolute() else Path(item["base_dir"]) / p


# ----------------------------------------------------------------- videos / audio

def _audio_item(item: dict, params: dict, src: Path, meta: dict) -> dict:
    """Normalise one media file into media/<id>.wav; returns its record."""
    from twin.audio import to_wav, wav_duration
    out = Path(params["out"])
    tmp = out / "media" / f".tmp-{_sha(str(src))[:16]}.wav"
    to_wav(src, tmp, params["sample_rate"])
    digest = hash_file(tmp)
    media_id = digest[:16]
    wav = out / "media" / f"{media_id}.wav"
    tmp.replace(wav)
    duration = wav_duration(wav)
    return {"id": media_id, "path": f"media/{media_id}.wav", "sha256": digest, "duration": round(duration, 3),
            "size": wav.stat().st_size, **meta}


def _duration_ok(duration: float, src: dict) -> Optional[str]:
    if src.get("min_duration") is not None and duration < src["min_duration"]:
        return f"shorter than min_duration ({duration:.1f} s < {src['min_duration']} s)"
    if src.get("max_duration") is not None and duration > src["max_duration"]:
        return f"longer than max_duration ({duration:.1f} s > {src['max_duration']} s)"
    return None


def _fetch_local_media(item: dict, params: dict) -> list[dict]:
    path = _local_path(item)
    if path.is_dir():
        return [_record(item, status="failed", reason=f"{path} is a folder, not a media file")]
    if not path.is_file():
        return [_record(item, status="failed", reason=f"file not found: {path}")]
    if path.stat().st_size > params["max_media_bytes"]:
        return [_record(item, status="skipped", reason=f"{_size(path.stat().st_size)}, over "
                        f"stages.fetch.max_media_mb ({_size(params['max_media_bytes'])})")]
    raw_hash = hash_file(path)
    try:
        rec = _audio_item(item, params, path, {"title": path.stem, "raw_sha256": raw_hash, "local": True})
    except UsageError as exc:
        return [_record(item, status="failed", reason=str(exc))]
    why = _duration_ok(rec["duration"], item["source"])
    if why:
        (Path(params["out"]) / rec["path"]).unlink(missing_ok=True)
        return [_record(item, status="skipped", reason=why)]
    return [_record(item, url=None, canonical_url=None, retrieved_at=None, **rec)]


def _ytdlp_options(item: dict, params: dict, cache: Path) -> dict:
    src = item["source"]
    opt = params["opt_out"]

    def match_filter(info, incomplete=False):
        hit = _opt_out_match(opt, url=info.get("webpage_url") or info.get("url"),
                             texts=(info.get("title"), info.get("uploader")),
                             channels=(info.get("uploader"), info.get("uploader_id"), info.get("channel"),
                                       info.get("channel_id"), info.get("channel_url")))
        if hit:
            return f"opt-out: {hit}"
        locked = params.get("locked")
        if locked is not None and not incomplete and info.get("extractor") not in POSITIONAL_EXTRACTORS:
            # a site's own ids are known before downloading; generic media are checked after
            if _identity(info, item["location"]) not in locked.get(item["label"], {}):
                return "not in the lock"
        dur = info.get("duration")
        if dur is not None and not incomplete:
            why = _duration_ok(float(dur), src)
            if why:
                return why
        return None

    options = {
        "format": "bestaudio/best",
        "outtmpl": str(cache / "%(extractor)s-%(id)s.%(ext)s"),
        "download_archive": str(cache / "archive.txt"),
        "writeinfojson": True,
        "writesubtitles": params["subtitles"],
        "writeautomaticsub": False,
        "subtitlesformat": "vtt/best",
        "subtitleslangs": ["all", "-live_chat"],
        "playlistend": min(src.get("max_items") or params["max_items"], params["max_items"]),
        "retries": params["retries"],
        "fragment_retries": params["retries"],
        "extractor_retries": params["retries"],
        "sleep_interval_requests": params["min_interval"] or None,
        "ignoreerrors": "only_download",
        "match_filter": match_filter,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "noplaylist": False,
        "socket_timeout": 30,
        "http_headers": {"User-Agent": params["user_agent"]},
        "max_filesize": params["max_media_bytes"],
    }
    if params.get("rate_limit"):
        from yt_dlp.utils import parse_bytes
        options["ratelimit"] = parse_bytes(params["rate_limit"])
    if params.get("cookies"):
        options["cookiefile"] = params["cookies"]
    if src.get("date_after") or src.get("date_before"):
        from yt_dlp.utils import DateRange
        options["daterange"] = DateRange(src.get("date_after"), src.get("date_before"))
    return options


class _Logger:
    """Collects yt-dlp's errors so that a failed item carries its reason."""

    def __init__(self):
        self.errors: list[str] = []

    def debug(self, msg):
        return None      # yt-dlp's chatter is not ours to print

    def info(self, msg):
        return None

    def warning(self, msg):
        return None

    def error(self, msg):
        self.errors.append(re.sub(r"\x1b\[[0-9;]*m", "", str(msg)).removeprefix("ERROR: "))


def _entries(info: dict) -> list[dict]:
    if info is None:
        return []
    if info.get("_type") in ("playlist", "multi_video"):
        out = []
        for e in info.get("entries") or []:
            out.extend(_entries(e))
        return out
    return [info]


def _media_file(udir: Path, base: str) -> Optional[Path]:
    """The downloaded media file of entry ``base`` (not its info.json, subtitles or partials)."""
    for p in sorted(udir.glob(glob.escape(base) + ".*")):
        if not p.name.endswith((".json", ".vtt", ".srt", ".part", ".ytdl", ".tmp")):
            return p
    return None


def _fetch_url_media(item: dict, params: dict) -> list[dict]:
    """Download a URL (video, playlist, channel) with yt-dlp into a per-URL cache folder.

    The folder keeps yt-dlp's download archive and an index of what the URL gave. A single
    video already in the cache is reused without any network access; a playlist is listed
    again and only entries not in the archive are downloaded.
    """
    import yt_dlp
    url = item["location"]
    hit = _opt_out_match(params["opt_out"], url=url)
    if hit:
        return [_record(item, url=url, status="skipped", reason=f"opt-out: {hit}")]
    udir = Path(params["cache"]) / "raw" / _sha(url)[:16]
    udir.mkdir(parents=True, exist_ok=True)
    index_path = udir / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"url": url, "entries": {}}
    records: list[dict] = []
    cached = index["entries"] and all(_media_file(udir, b) for b in index["entries"])
    if not (cached and not index.get("playlist")):
        logger = _Logger()
        options = _ytdlp_options(item, params, udir)
        options["logger"] = logger
        try:
            with yt_dlp.YoutubeDL(options) as ydl:
                info = ydl.extract_info(url, download=True)
                info = ydl.sanitize_info(info) if info else None
        except yt_dlp.utils.DownloadError as exc:
            reason = logger.errors[-1] if logger.errors else str(exc)
            return [_record(item, url=url, status="failed", reason=reason.strip())]
        now = _now()
        for e in _entries(info):
            base = f"{e.get('extractor')}-{e.get('id')}"
            if _media_file(udir, base) is not None and base not in index["entries"]:
                index["entries"][base] = {"retrieved_at": now}
        index["playlist"] = bool(info and info.get("_type") in ("playlist", "multi_video"))
        atomic_write_json(index_path, index)
        for err in logger.errors:
            records.append(_record(item, url=url, status="failed", reason=err.strip()))
        if not index["entries"] and not records:
            records.append(_record(item, url=url, status="failed", reason="nothing downloadable at this URL"))
    out = Path(params["out"])
    for base, meta in sorted(index["entries"].items()):
        media = _media_file(udir, base)
        info_file = udir / f"{base}.info.json"
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        page = info.get("webpage_url") or url
        if media is None:
            records.append(_record(item, url=page, status="failed", reason="download missing from cache"))
            continue
        try:
            rec = _audio_item(item, params, media, {"title": info.get("title"), "raw_sha256": hash_file(media)})
        except UsageError as exc:
            records.append(_record(item, url=page, status="failed", reason=str(exc)))
            continue
        why = _duration_ok(rec["duration"], item["source"])
        if why:
            (out / rec["path"]).unlink(missing_ok=True)
            records.append(_record(item, url=page, status="skipped", reason=why))
            continue
        slim = {k: info.get(k) for k in ("id", "title", "uploader", "uploader_id", "channel", "channel_id",
                                         "upload_date", "duration", "webpage_url", "extractor", "license",
                                         "description") if info.get(k) is not None}
        atomic_write_json(out / "media" / f"{rec['id']}.info.json", slim)
        subs = []
        if params["subtitles"]:
            for sub in sorted(udir.glob(glob.escape(base) + ".*.vtt")):
                lang = sub.name[len(base) + 1:-4]
                atomic_copy(sub, out / "media" / f"{rec['id']}.{lang}.vtt")
                subs.append({"lang": lang, "path": f"media/{rec['id']}.{lang}.vtt"})
        identity = _identity(info, page)
        records.append(_record(item, url=page, canonical_url=canonical_url(page), identity=identity,
                               retrieved_at=meta["retrieved_at"],
                               subtitles=subs, uploader=info.get("uploader"),
                               licence=item.get("licence") or info.get("license"), **rec))
    return records


@guarded
def fetch_video(item: dict, params: dict) -> dict:
    """One video source (a file, a URL, a playlist or a channel) → audio records."""
    if item["location"].startswith(("http://", "https://")):
        return {"records": _fetch_url_media(item, params)}
    return {"records": _fetch_local_media(item, params)}


# ----------------------------------------------------------------- text helpers

def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def _read_text_source(item: dict, params: dict) -> tuple[str, Optional[str], Optional[str], Optional[str]]:
    """(text, final_url, content_type, retrieved_at) of a file or URL."""
    from twin.net import get
    loc = item["location"]
    if loc.startswith(("http://", "https://")):
        r = get(loc, retries=params["retries"], min_interval=params["min_interval"],
                max_bytes=params["max_text_bytes"])
        return r.text, r.url, r.content_type, _now()
    from twin.text import decode_text
    path = _local_path(item)
    if path.is_dir():
        raise UsageError(f"{path}: a folder, not a file; name the text file in it")
    size = path.stat().st_size
    if size > params["max_text_bytes"]:
        raise UsageError(f"{path}: {_size(size)}, over stages.fetch.max_text_mb ({_size(params['max_text_bytes'])})")
    return decode_text(path.read_bytes(), str(path))[0], None, None, None


def html_to_markdown(html: str, url: Optional[str] = None) -> tuple[str, Optional[str]]:
    """Main text of an HTML page as Markdown (headings kept), and its title."""
    import trafilatura
    text = trafilatura.extract(html, url=url, output_format="markdown", include_comments=False,
                               include_tables=False, favor_precision=True, deduplicate=True) or ""
    meta = trafilatura.extract_metadata(html)
    title = meta.title if meta is not None else None
    return text.strip(), title


def _fragment_text(html: str) -> str:
    """Plain text of an HTML fragment (a feed entry's content)."""
    if "<" not in html:
        return html.strip()
    import lxml.html
    try:
        node = lxml.html.fragment_fromstring(html, create_parent="div")
    except Exception:  # noqa: BLE001 - malformed fragments fall back to tag stripping
        return re.sub(r"<[^>]+>", " ", html).strip()
    return re.sub(r"\s+", " ", node.text_content()).strip()


# ----------------------------------------------------------------- posts

def _post(text: str, *, pid: Optional[str] = None, created_at=None, reply_to_text=None, url=None,
          extra: Optional[dict] = None) -> dict:
    text = (text or "").strip()
    return {"id": pid or _sha(text)[:16], "text": text, "created_at": created_at,
            "reply_to_text": (reply_to_text or None), "url": url, **(extra or {})}


def _is_repost(text: str) -> bool:
    return bool(re.match(r"^\s*(RT|rt)\s+@\w+", text or ""))


def parse_tweets_js(text: str) -> tuple[list[dict], int]:
    """An X/Twitter archive's ``tweets.js`` → posts (reposts dropped), and how many were dropped."""
    start = text.find("[")
    if start < 0:
        raise ValueError("not a tweets.js archive (no JSON array)")
    data = json.loads(text[start:])
    by_id = {}
    for row in data:
        tw = row.get("tweet", row)
        by_id[str(tw.get("id_str") or tw.get("id"))] = tw
    posts, dropped = [], 0
    for tid, tw in by_id.items():
        body = tw.get("full_text") or tw.get("text") or ""
        if _is_repost(body) or tw.get("retweeted_status"):
            dropped += 1
            continue
        parent = by_id.get(str(tw.get("in_reply_to_status_id_str") or ""))
        reply_to = (parent.get("full_text") or parent.get("text")) if parent else None
        posts.append(_post(body, pid=tid, created_at=tw.get("created_at"), reply_to_text=reply_to,
                           extra={"in_reply_to_screen_name": tw.get("in_reply_to_screen_name")}))
    return posts, dropped


def _truthy(v) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "y")


def parse_table(rows: list[dict], src: dict, where: str) -> tuple[list[dict], int]:
    tf = src["text_field"]
    if rows and tf not in rows[0]:
        raise ValueError(f"{where}: no field {tf!r} (fields: {', '.join(list(rows[0])[:12])}); "
                         "set text_field in the spec")
    posts, dropped = [], 0
    for row in rows:
        body = row.get(tf)
        if not body or not str(body).strip():
            continue
        if (src.get("repost_field") and _truthy(row.get(src["repost_field"], ""))) or _is_repost(str(body)):
            dropped += 1
            continue
        posts.append(_post(str(body), pid=str(row[src["id_field"]]) if src.get("id_field") and row.get(
            src["id_field"]) not in (None, "") else None,
            created_at=row.get(src["date_field"]) if src.get("date_field") else None,
            reply_to_text=row.get(src["reply_to_field"]) if src.get("reply_to_field") else None))
    return posts, dropped


def parse_feed(text: str, limit: int) -> list[dict]:
    import feedparser
    feed = feedparser.parse(text)
    if feed.bozo and not feed.entries:
        raise ValueError(f"not a readable RSS/Atom feed ({feed.get('bozo_exception')})")
    posts = []
    for e in feed.entries[:limit]:
        content = (e.get("content") or [{}])[0].get("value") or e.get("summary") or ""
        body = _fragment_text(content)
        title = (e.get("title") or "").strip()
        if title and not body.startswith(title):
            body = f"{title}\n\n{body}" if body else title
        posts.append(_post(body, pid=e.get("id") or e.get("link"), created_at=e.get("published") or e.get("updated"),
                           url=e.get("link")))
    return posts


def _detect_post_format(src: dict, text: str, loc: str) -> str:
    if src["format"] != "auto":
        return src["format"]
    low = loc.lower()
    if low.endswith("tweets.js") or text.lstrip().startswith("window.YTD."):
        return "tweets-js"
    if low.endswith(".jsonl") or low.endswith(".ndjson"):
        return "jsonl"
    if low.endswith(".csv"):
        return "csv"
    head = text.lstrip()[:500].lower()
    if head.startswith("<?xml") or "<rss" in head or "<feed" in head:
        return "feed"
    if "<html" in head or "<!doctype html" in head:
        return "page"
    return "text"


@guarded
def fetch_posts(item: dict, params: dict) -> dict:
    src = item["source"]
    loc = item["location"]
    hit = _opt_out_match(params["opt_out"], url=loc if "://" in loc else None)
    if hit:
        return {"records": [_record(item, status="skipped", reason=f"opt-out: {hit}")], "posts": []}
    try:
        text, final_url, ctype, retrieved = _read_text_source(item, params)
    except Exception as exc:  # noqa: BLE001 - recorded as the item's failure
        return {"records": [_record(item, status="failed", reason=str(exc))], "posts": []}
    fmt = _detect_post_format(src, text, loc)
    limit = src.get("max_items") or 10 ** 9
    dropped = 0
    bad_lines: list[dict] = []
    try:
        if fmt == "tweets-js":
            posts, dropped = parse_tweets_js(text)
        elif fmt == "jsonl":
            # a malformed line is skipped and reported with its number; the good lines are kept
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        bad_lines.append({"line": n, "reason": f"not JSON ({exc.msg})"})
                        continue
                    if not isinstance(row, dict):
                        bad_lines.append({"line": n, "reason": f"a JSON {type(row).__name__}, not an object"})
                        continue
                    rows.append(row)
            if bad_lines and not rows:
                raise ValueError(f"no line is a JSON object (line {bad_lines[0]['line']}: {bad_lines[0]['reason']})")
            posts, dropped = parse_table(rows, src, loc)
            dropped += len(bad_lines)
        elif fmt == "csv":
            posts, dropped = parse_table(list(csv.DictReader(io.StringIO(text))), src, loc)
        elif fmt == "feed":
            posts = parse_feed(text, min(limit, params["max_items"]))
        elif fmt == "page":
            body, title = html_to_markdown(text, final_url or loc)
            if not body:
                raise ValueError("no main text found on the page")
            posts = [_post(body, url=final_url, extra={"title": title})]
        else:
            posts = [_post(p) for p in re.split(r"\n\s*\n", text) if p.strip()]
    except (ValueError, KeyError) as exc:
        return {"records": [_record(item, status="failed", reason=f"{fmt}: {exc}")], "posts": []}
    kept = []
    for p in posts[:limit]:
        hit = _opt_out_match(params["opt_out"], texts=(p["text"],))
        if hit:
            dropped += 1
            continue
        p["source"] = item["label"]
        kept.append(p)
    digest = _sha(text)
    rec = _record(item, url=final_url, canonical_url=canonical_url(final_url) if final_url else None,
                  retrieved_at=retrieved, sha256=digest, size=len(text.encode("utf-8")), format=fmt,
                  items=len(kept), dropped=dropped, local=final_url is None)
    if bad_lines:
        rec["bad_lines"] = bad_lines[:100]
        rec["bad_line_count"] = len(bad_lines)
    if not kept:
        rec.update(status="failed", reason="no posts found")
    return {"records": [rec], "posts": kept}


# ----------------------------------------------------------------- facts

def _mediawiki_api(url: str) -> tuple[str, str]:
    """(api endpoint, page title) for a MediaWiki page URL or API URL."""
    p = urlparse(url)
    root = f"{p.scheme}://{p.netloc}"
    if "/wiki/" in p.path:
        from urllib.parse import unquote
        title = unquote(p.path.split("/wiki/", 1)[1]).replace("_", " ")
        prefix = p.path.split("/wiki/", 1)[0]
        return f"{root}{prefix}/w/api.php", title
    from urllib.parse import parse_qs
    q = parse_qs(p.query)
    return f"{root}{p.path}", (q.get("titles") or q.get("page") or [""])[0]


def mediawiki_markdown(extract: str) -> str:
    """TextExtracts plain text ('== Heading ==') → Markdown headings."""
    def heading(m):
        level = min(len(m.group(1)), 6)
        return "#" * level + " " + m.group(2).strip()
    return re.sub(r"^(={2,6})\s*(.*?)\s*\1\s*$", heading, extract, flags=re.M).strip()


def _fetch_mediawiki(item: dict, params: dict) -> tuple[str, str, str, dict]:
    from twin.net import get
    api, title = _mediawiki_api(item["location"])
    if not title:
        raise ValueError("no page title in the URL")
    r = get(api, retries=params["retries"], min_interval=params["min_interval"],
            params={"action": "query", "prop": "extracts|info|revisions", "explaintext": "1", "redirects": "1",
                    "inprop": "url", "rvprop": "ids", "format": "json", "formatversion": "2", "titles": title})
    data = json.loads(r.text)
    pages = data.get("query", {}).get("pages", [])
    if isinstance(pages, dict):
        pages = list(pages.values())
    if not pages or pages[0].get("missing") is not None or "extract" not in pages[0]:
        raise ValueError(f"MediaWiki has no page {title!r}")
    page = pages[0]
    body = f"# {page.get('title', title)}\n\n" + mediawiki_markdown(page["extract"])
    rev = (page.get("revisions") or [{}])[0].get("revid") or page.get("lastrevid")
    return body, page.get("title", title), page.get("fullurl") or item["location"], {"revision": rev}


def split_sections(markdown: str) -> list[dict]:
    sections, title, buf = [], None, []
    for line in markdown.splitlines():
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if m:
            if any(b.strip() for b in buf):
                sections.append({"title": title, "text": "\n".join(buf).strip()})
            title, buf = m.group(2).strip(), []
        else:
            buf.append(line)
    if any(b.strip() for b in buf):
        sections.append({"title": title, "text": "\n".join(buf).strip()})
    return sections


@guarded
def fetch_facts(item: dict, params: dict) -> dict:
    src = item["source"]
    loc = item["location"]
    hit = _opt_out_match(params["opt_out"], url=loc if "://" in loc else None)
    if hit:
        return {"records": [_record(item, status="skipped", reason=f"opt-out: {hit}")], "facts": []}
    fmt = src["format"]
    if fmt == "auto":
        fmt = "mediawiki" if ("://" in loc and ("/wiki/" in loc or "api.php" in loc)) else "auto"
    extra = {}
    try:
        if fmt == "mediawiki":
            body, title, final_url, extra = _fetch_mediawiki(item, params)
            retrieved = _now()
        else:
            text, final_url, ctype, retrieved = _read_text_source(item, params)
            is_html = "html" in (ctype or "") or text.lstrip()[:200].lower().startswith(("<!doctype html", "<html"))
            if fmt == "page" or (fmt == "auto" and is_html):
                body, title = html_to_markdown(text, final_url or loc)
                fmt = "page"
            else:
                body, title, fmt = text.strip(), None, "text"
            title = title or next((s for s in re.findall(r"^#\s+(.*)$", body, re.M)), None) or Path(
                urlparse(loc).path or loc).stem
        if not body.strip():
            raise ValueError("no text found")
    except Exception as exc:  # noqa: BLE001 - recorded as the item's failure
        return {"records": [_record(item, status="failed", reason=str(exc))], "facts": []}
    digest = _sha(body)
    fid = digest[:16]
    atomic_write_text(Path(params["out"]) / "facts" / f"{fid}.md", body + "\n")
    fact = {"id": fid, "title": title, "path": f"facts/{fid}.md", "source": item["label"],
            "sections": split_sections(body), "url": final_url, **extra}
    rec = _record(item, url=final_url, canonical_url=canonical_url(final_url) if final_url else None,
                  retrieved_at=retrieved, id=fid, sha256=digest, size=len(body.encode()), format=fmt,
                  title=title, path=fact["path"], local=final_url is None, **extra)
    return {"records": [rec], "facts": [fact]}


# every fetcher runs under the public-address guard (twin.net.public_only) unless sources.allow_local
FETCHERS = {"videos": fetch_video, "posts": fetch_posts, "facts": fetch_facts}


# ----------------------------------------------------------------- the driver

def load_opt_out(names=(), channels=(), domains=(), file: Optional[Path] = None) -> dict:
    opt = {"names": [n.lower() for n in names], "channels": [c.lower() for c in channels],
           "domains": [d.lower().lstrip(".") for d in domains]}
    if file:
        for line in Path(file).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            kind, _, value = line.partition(":")
            if kind in ("name", "channel", "domain") and value:
                opt[kind + "s"].append(value.strip().lower().lstrip("." if kind == "domain" else ""))
            else:
                opt["names"].append(line.lower())
    return opt


def make_items(kind_sources: list[tuple[str, dict]], base_dir: Path) -> list[dict]:
    items = []
    for kind, i, src in kind_sources:
        items.append({"kind": kind, "label": f"sources.{kind}[{i}]", "location": src.get("url") or src["path"],
                      "source": src, "licence": src.get("licence"), "base_dir": str(base_dir)})
    return items


def collect(ctx_map, items: list[dict], params: dict, out: Path) -> tuple[dict, list[dict]]:
    """Run the fetchers over ``items`` through ``ctx_map``, write the stage's outputs; return
    the counts and every failed item with its reason."""
    results = []
    for kind in ("videos", "posts", "facts"):
        kind_items = [it for it in items if it["kind"] == kind]
        if kind_items:
            results += ctx_map(FETCHERS[kind], kind_items, key=lambda it: it["label"] + "|" + it["location"],
                               params=params, step=f"fetch {kind}")
    provenance, videos, posts, facts = [], [], [], []
    fact_ids: set[str] = set()
    seen_hash, seen_url = {}, {}
    locked = params.get("locked")
    seen_locked: set[tuple[str, str]] = set()
    for item, ok, value in results:
        if not ok:
            provenance.append(_record(item, status="failed", reason=value))
            continue
        item_ok = True
        for rec in value["records"]:
            if locked is not None and rec["status"] == "ok":
                want = locked.get(rec["source"], {})
                key = lock_key(rec)
                if key not in want:
                    rec = {**rec, "status": "skipped", "reason": "not in the lock"}
                else:
                    seen_locked.add((rec["source"], key))
                    if want[key] != rec.get("sha256"):
                        rec = {**rec, "status": "failed", "reason": f"{LOCK_CHANGED} "
                               f"({str(want[key])[:12]} → {str(rec.get('sha256'))[:12]})"}
                if rec["kind"] != "videos" and rec["status"] != "ok":
                    item_ok = False
            if rec["status"] == "ok" and rec["kind"] == "videos":
                key_h, key_u = rec.get("sha256"), rec.get("identity")
                dup = seen_hash.get(key_h) or (seen_url.get(key_u) if key_u else None)
                if dup:
                    rec = {**rec, "status": "duplicate", "reason": f"same content as {dup}"}
                else:
                    seen_hash[key_h] = rec["id"]
                    if key_u:
                        seen_url[key_u] = rec["id"]
                    videos.append({k: rec.get(k) for k in ("id", "path", "duration", "title", "sha256", "url",
                                                            "source", "subtitles", "uploader")})
            provenance.append(rec)
        if not item_ok:
            continue                     # a text source whose content changed since the lock
        for p in value.get("posts", []):
            posts.append(p)
        for f in value.get("facts", []):
            if f["id"] not in fact_ids:
                fact_ids.add(f["id"])
                facts.append(f)
    for label, want in sorted((locked or {}).items()):
        for key in sorted(set(want) - {k for s, k in seen_locked if s == label}):
            provenance.append({"kind": label.split(".")[1].split("[")[0], "source": label, "location": key,
                               "status": "failed", "reason": LOCK_GONE})
    # Posts: dedup exact repeats across sources (near-duplicates are style_data's job).
    seen_text, unique_posts = set(), []
    for p in posts:
        norm = re.sub(r"\s+", " ", p["text"]).strip().lower()
        if norm in seen_text:
            continue
        seen_text.add(norm)
        unique_posts.append(p)
    atomic_write_jsonl(out / "provenance.jsonl", provenance)
    atomic_write_jsonl(out / "videos.jsonl", videos)
    atomic_write_jsonl(out / "posts.jsonl", unique_posts)
    atomic_write_jsonl(out / "facts.jsonl", facts)
    # Media written by an item that was later found to be a duplicate or skipped are removed.
    keep = {v["path"] for v in videos}
    media = out / "media"
    if media.is_dir():
        for f in media.glob("*.wav"):
            if f"media/{f.name}" not in keep:
                f.unlink()
    counts = {
        "videos": len(videos), "audio_seconds": round(sum(v["duration"] for v in videos), 2),
        "posts": len(unique_posts), "facts_documents": len(facts),
        "failed": sum(1 for r in provenance if r["status"] == "failed"),
        "skipped": sum(1 for r in provenance if r["status"] in ("skipped", "duplicate")),
    }
    failures = [{"item": r["source"] + " " + (r.get("url") or r["location"]), "reason": r["reason"]}
                for r in provenance if r["status"] == "failed"]
    return counts, failures


@register
class Fetch(Stage):
    name = "fetch"
    version = "1"
    summary = "download videos, posts and factual pages; normalise audio; record provenance"
    spec_keys = ("sources", "opt_out", "consent", "id")
    libraries = ("yt-dlp", "feedparser", "trafilatura")
    Settings = Settings

    def external_inputs(self, spec) -> dict[str, Path]:
        files = {}
        for kind in ("videos", "posts", "facts"):
            for i, src in enumerate(getattr(spec.sources, kind)):
                if src.path:
                    files[f"sources.{kind}[{i}]"] = spec.resolve_path(src.path)
        if spec.opt_out.file:
            files["opt_out.file"] = spec.resolve_path(spec.opt_out.file)
        if spec.stages.fetch.locked:
            from twin.lockfile import lock_path_for
            files["lock"] = lock_path_for(spec)
        return files

    def locked_inputs(self, spec) -> dict[str, dict[str, str]]:
        """{source label: {lock key: content hash}} from the spec's committed lock file."""
        from twin.lockfile import lock_path_for
        path = lock_path_for(spec)
        if path is None or not path.is_file():
            raise StageError(self.name, f"stages.fetch.locked is set but there is no lock file at {path}; "
                                        "build once and run `twin lock SPEC`, then commit it")
        out: dict[str, dict[str, str]] = {}
        for r in read_json(path).get("inputs", []):
            out.setdefault(r["source"], {})[lock_key(r)] = r["sha256"]
        return out

    def params(self, settings, out: Path, cache: Path, opt_out: dict, allow_local: bool = False) -> dict:
        from twin.net import USER_AGENT
        return {"out": str(out), "cache": str(cache), "sample_rate": settings.sample_rate,
                "max_items": settings.max_items_per_source, "retries": settings.retries,
                "min_interval": settings.min_interval, "rate_limit": settings.rate_limit,
                "cookies": settings.cookies, "subtitles": settings.subtitles, "opt_out": opt_out,
                "user_agent": USER_AGENT, "allow_local": allow_local,
                "max_media_bytes": int(settings.max_media_mb * 2**20), "max_text_bytes": int(settings.max_text_mb * 2**20)}

    def run(self, ctx) -> dict:
        spec = ctx.spec
        if not spec.consent or not spec.consent.basis:
            raise StageError(self.name, "the spec states no consent basis; refusing to fetch")
        opt = load_opt_out(spec.opt_out.names, spec.opt_out.channels, spec.opt_out.domains,
                           spec.resolve_path(spec.opt_out.file) if spec.opt_out.file else None)
        for name in [spec.name, *spec.aliases]:
            if name.lower() in opt["names"]:
                raise StageError(self.name, f"{name!r} is on the opt-out list; this twin is not built")
        settings = ctx.settings
        if settings.cookies:
            settings = settings.model_copy(update={"cookies": str(spec.resolve_path(settings.cookies))})
        sources = [(kind, i, src.model_dump(mode="json"))
                   for kind in ("videos", "posts", "facts") for i, src in enumerate(getattr(spec.sources, kind))]
        for kind, i, src in sources:
            if src.get("url") and is_local_url(src["url"]) and not spec.sources.allow_local:
                raise StageError(self.name, f"sources.{kind}[{i}]: local address needs sources.allow_local")
        items = make_items(sources, spec.base_dir)
        params = self.params(settings, ctx.out, ctx.cache, opt, spec.sources.allow_local)
        if settings.locked:
            params["locked"] = self.locked_inputs(spec)
        counts, failures = collect(ctx.map, items, params, ctx.out)
        ctx.failures[:] = failures  # every failure once, as recorded in provenance.jsonl
        for f in failures[:10]:     # on the console too, not only in provenance.jsonl
            log.warning("fetch failed: %s: %s", f["item"], f["reason"])
        if len(failures) > 10:
            log.warning("... and %d more failures (provenance.jsonl)", len(failures) - 10)
        for rec in read_jsonl(ctx.out / "provenance.jsonl"):
            if rec.get("bad_lines"):
                first = rec["bad_lines"][0]
                log.warning("%s: skipped %d malformed line(s) (line %d: %s); kept %d posts", rec.get("location"),
                            rec["bad_line_count"], first["line"], first["reason"], rec.get("items", 0))
        usable = counts["videos"] + counts["posts"] + counts["facts_documents"]
        if items and usable == 0 and settings.fail_when_empty:
            first = f": {failures[0]['item']}: {failures[0]['reason']}" if failures else ""
            more = f" (and {len(failures) - 1} more, above)" if len(failures) > 1 else ""
            raise StageError(self.name, f"nothing usable was fetched{first}{more}")
        if settings.locked and counts["failed"]:
            lock_failures = [f for f in failures if f["reason"].startswith((LOCK_CHANGED, LOCK_GONE))]
            if lock_failures:
                raise StageError(self.name, f"{len(lock_failures)} input(s) differ from the lock, first: "
                                 f"{lock_failures[0]['item']}: {lock_failures[0]['reason']}")
        if settings.strict and counts["failed"]:
            raise StageError(self.name, f"{counts['failed']} item(s) failed and stages.fetch.strict is set; first: "
                             f"{failures[0]['item']}: {failures[0]['reason']}")
        return counts

