import sys

from oskt.cli import main

sys.exit(main())
