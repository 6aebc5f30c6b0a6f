"""``python -m slicectl.cli``: the same as the ``slicectl`` script."""

import sys

from slicectl.cli import main

sys.exit(main())
