"""Errors a user can act on. The CLI prints their message on one line and exits with code 2."""


class EmosteerError(Exception):
    """Something the user asked for cannot be done; the message says what and what to do."""


class UnknownEmotionError(EmosteerError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownArchitectureError(EmosteerError):
    pass


class ModelLoadError(EmosteerError):
    pass


class VectorFileError(EmosteerError):
    pass


class VectorMismatchError(EmosteerError):
    pass


class BadInputError(EmosteerError, ValueError):
    pass


class BadAlphaError(BadInputError):
    """A steering strength or mix weight that is not a finite number within the bound."""
