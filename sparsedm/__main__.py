import sys

from sparsedm.cli import main

sys.exit(main())
