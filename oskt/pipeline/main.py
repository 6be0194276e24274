"""``python -m oskt.pipeline.main --profile quick``: the whole pipeline through DVC → Prefect → Ray → MLflow
(what ``make run`` calls); prints where the report is. Same as ``oskt run``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from oskt.cli.pipeline_cmd import run_main

    return run_main(argv)


if __name__ == "__main__":
    sys.exit(main())
