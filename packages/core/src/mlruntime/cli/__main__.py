"""``python -m mlruntime.cli``: the same as the ``mlruntime`` command."""

import sys

from mlruntime.cli import main

sys.exit(main())
