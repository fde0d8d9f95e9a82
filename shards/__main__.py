"""``python -m shards``: see shards/cli.py."""

from shards.errors import dependencies_required

if __name__ == "__main__":
    with dependencies_required():
        from shards.cli import main

        code = main()
    raise SystemExit(code)
