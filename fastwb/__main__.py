"""``python -m fastwb ...`` is the ``fastwb`` command."""

import sys

from fastwb.cli import main

if __name__ == "__main__":      # not when imported (pydoc, multiprocessing's spawn)
    sys.exit(main())
