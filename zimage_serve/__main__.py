"""``python -m zimage_serve``: the ``zimage-serve`` command."""

import sys

from .cli import main

sys.exit(main())
