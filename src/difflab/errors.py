"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class UserError(Exception):
    """A mistake in the user's input (path, argument, config, data, checkpoint), reported without a traceback."""


class DataError(UserError, ValueError):
    """Missing, empty or unreadable data."""


class CheckpointError(UserError, ValueError):
    """A missing, corrupt or incompatible checkpoint."""


class TrainingDiverged(UserError, RuntimeError):
    """A non-finite loss; the last good checkpoint is kept."""
