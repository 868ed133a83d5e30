.PHONY: setup demo test lint
setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/prom3e demo --out demo-output

test: setup
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check .
