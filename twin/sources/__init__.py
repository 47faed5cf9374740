"""The source readers the fetch stage runs: one work item per source (``fn(item, params)``, run
by any executor, each under the public-address guard unless local addresses are allowed).

  media   videos and audio (files, yt-dlp URLs)
  posts   the persona's own posts (archives, exports, feeds, pages)
  facts   factual text about the persona (files, pages, MediaWiki)
  common  records, provenance, opt-out, text reading
"""
