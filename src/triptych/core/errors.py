"""User-facing errors: one clear line that names the input and the fix."""


class TriptychError(Exception):
    """An error the user can act on; the CLI prints it as one line and exits 2."""


class InputError(TriptychError, ValueError):
    """A bad input file, column, shape or value."""
