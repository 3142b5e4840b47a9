"""`python -m sdm.eval.reference_stats`: a thin entry point; the command is sdm.cli.reference_stats."""

import sys

from sdm.cli.reference_stats import main

if __name__ == "__main__":
    sys.exit(main())
