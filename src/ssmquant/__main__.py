"""``python -m ssmquant`` (and ``torchrun -m ssmquant``) = the ``ssmquant`` command."""

import sys

from .cli import main

sys.exit(main())
