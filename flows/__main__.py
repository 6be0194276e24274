"""``python -m flows run|stage|grid ...``: the pipeline verbs (the ``cmd:`` of every dvc.yaml stage)."""

import sys

from flows.cli import main

sys.exit(main())
