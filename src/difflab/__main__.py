"""``python -m difflab`` (and ``torchrun -m difflab``): the difflab command."""
import sys

from .cli.main import main

sys.exit(main())
