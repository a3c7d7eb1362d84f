"""``python -m pyrovae ...`` is the ``pyrovae`` command."""

import sys

from pyrovae.runs.cli import main

sys.exit(main())
