"""``python -m shards``: see shards/cli.py."""

from shards.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
