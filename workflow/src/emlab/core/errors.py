"""The one exception type the workflow raises for bad input or bad config."""


class EMLabError(Exception):
    """A user-facing error: the message names the file/line/key and what to do."""
