"""The one exception type for user mistakes: the CLI prints its message on one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user (config value, path, corpus, run directory).

    The message must name the field or file and say what is wrong, in one line.
    """
