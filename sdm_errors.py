"""The one exception type that means "the user gave us something we cannot use".

Command-line entry points catch :class:`SdmError` and print its message as a single line;
anything else is a bug and keeps its traceback.
"""


class SdmError(Exception):
    """A problem with the user's input (path, file, option), reported as one line."""
