"""``python -m oskt.pipeline <stage> [args]``: one pipeline stage (the ``cmd:`` of every dvc.yaml stage)."""

import sys

from oskt.cli.pipeline_cmd import stage_main

sys.exit(stage_main())
