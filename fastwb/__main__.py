"""``python -m fastwb ...`` is the ``fastwb`` command."""

import sys

from fastwb.cli import main

sys.exit(main())
