"""``python -m sparsedm.sampling ...`` runs ``sparsedm sample ...`` (what torchrun launches)."""

import sys

from sparsedm.sampling.cli import main

sys.exit(main())
