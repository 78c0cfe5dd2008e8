"""The one exception type a user can cause; the CLI turns it into one line."""


class MfhelmError(Exception):
    """A problem the user can fix. The message says what to do next."""
