"""The one exception type for mistakes a user can fix."""


class PersonavecError(Exception):
    """A problem the user can fix: the CLI prints it as one line and exits with code 2."""
