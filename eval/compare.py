"""`python eval/compare.py ann-vs-snn | ann-fid`: a thin entry point; the command is sdm.cli.compare."""

import sys

from sdm.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
