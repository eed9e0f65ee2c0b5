// Package packaging holds the tests of aserpc's wheel (scripts/build_wheel.py,
// `just wheel`): its contents, `pip install --no-index` of it into a fresh
// venv whose `aserpc` serves from that venv's Python with no flag, and
// `uvx --from <wheel> --with <calculator package> aserpc worker ...` against a
// broker, with uv from PyPI. It has no code of its own.
package packaging
