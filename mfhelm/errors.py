"""What a user can cause (MfhelmError) or do (Interrupted); the CLI turns
either into one line."""


class MfhelmError(Exception):
    """A problem the user can fix. The message says what to do next."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM, raised by the CLI's signal handlers. A BaseException
    of our own, so that click does not swallow it as it does KeyboardInterrupt
    ("Aborted!"), and cleanup code (finally, context managers) runs."""
