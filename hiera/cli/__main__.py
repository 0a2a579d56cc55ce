"""``python -m hiera.cli``: the same as the ``hiera`` command."""

import sys

from . import main

sys.exit(main())
