"""The one exception type the CLI turns into a clean message and a non-zero exit."""


class TirgrpoError(Exception):
    """A user-facing error: bad input, bad config, a run that cannot go on.

    The message must name what is wrong and where (file, row, field), because the
    CLI prints it as is, without a traceback.
    """
