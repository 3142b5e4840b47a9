"""The one command-line layer: every command is parser -> settings (a validated dataclass) -> one library call.

A module here is a CLI module: it may import any stage; no library module imports it. Library
code is imported after argument parsing, so `--help` never waits for torch.
"""
