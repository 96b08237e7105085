# The recipes people type. `uv run just --list` shows them.
set shell := ["bash", "-euo", "pipefail", "-c"]

# Show the recipes.
default:
    @just --list

# Install everything the workspace needs (exactly what uv.lock says).
setup:
    uv sync --locked

# Run the whole test suite (everything that can run on this machine; GPU tests skip with a reason),
# in FT_TEST_WORKERS worker processes (default 2), a test file per worker at a time.
test *ARGS:
    uv run --locked pytest -n {{env_var_or_default("FT_TEST_WORKERS", "2")}} --dist loadfile {{ARGS}}

# Lint and check formatting.
lint:
    uv run --locked ruff check .
    uv run --locked ruff format --check .
    uv run --locked lint-imports

# Format the code and apply safe lint fixes.
fmt:
    uv run --locked ruff format .
    uv run --locked ruff check --fix .

# Run every benchmark under benchmarks/ (each prints ft's figure, its baseline's, and the ratio).
bench:
    for script in benchmarks/bench_*.py; do echo "== $script"; uv run --locked python "$script"; done

# Regenerate the generated docs (config, CLI and REST references, catalog, architectures) from
# the code, and the Homebrew formula (Formula/ft.rb) from uv.lock.
docs:
    uv run --locked ft config schema --markdown -o docs/config-reference.md
    uv run --locked python -c "from pathlib import Path; from ft_models.architectures import architectures_markdown as a; Path('docs/architectures.md').write_text(a())"
    uv run --locked python -c "from pathlib import Path; from ft_models.catalog import update_docs_section as u; p = Path('docs/models.md'); p.write_text(u(p.read_text()))"
    uv run --locked python scripts/docs_reference.py
    uv run --locked python scripts/homebrew_formula.py

# Build the docs site into site/ as CI does (strict: every link and anchor checked).
site:
    NO_MKDOCS_2_WARNING=1 uv run --locked mkdocs build --strict

# The main job on the embedded default model: fine-tune it offline and compare (README's first command).
demo:
    uv run --locked ft demo
