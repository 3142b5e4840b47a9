"""`sdm-zoo`: the registered source models as a Markdown table (name, aliases, size, measured FID)."""

from __future__ import annotations

import sys

from sdm.cli.common import make_parser, run_command
from sdm.pretrained.zoo import zoo_table

PROG = "sdm-zoo"


def main(argv: list[str] | None = None) -> int:
    make_parser(PROG, __doc__).parse_args(argv)  # --help, -h; unknown flags end with exit 2
    return run_command(PROG, zoo_table, print)


if __name__ == "__main__":
    sys.exit(main())
