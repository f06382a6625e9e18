"""``python -m fastconv``: the command line (:mod:`fastconv.cli`), where the ``fastconv`` script
is not on the PATH."""

import sys

from .cli import main

sys.exit(main())
