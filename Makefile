# `make demo` and `make test` set everything up themselves (scripts/setup.sh), then run.
SPEC ?= persona_specs/demo.yaml
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench media clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/twin build $(SPEC)
	.venv/bin/twin status $(SPEC)
	[ "$(SPEC)" != persona_specs/demo.yaml ] || .venv/bin/twin verify twin-work/tamsin-vell/package/tamsin-vell-twin.tar.gz

test: setup
	.venv/bin/python -m pytest -m "" $(PYTEST_ARGS) tests

# day-to-day: everything not marked slow (no demo build, no real-voice conversations)
test-fast: setup
	.venv/bin/python -m pytest -m "not slow" $(PYTEST_ARGS) tests

bench: setup
	.venv/bin/python bench/run.py

# Regenerate the demo persona's media and texts (committed; needs espeak-ng, sox, ffmpeg).
media: setup
	.venv/bin/python persona_specs/demo/make_demo.py

clean:
	rm -rf twin-work
