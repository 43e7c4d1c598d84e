"""How a benchmark presents itself on the command line: `python -m bench.NAME --help` prints its module
docstring, usage lines as written."""

import argparse


def parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of `python -m <module>`, its help the module's docstring `doc`."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
