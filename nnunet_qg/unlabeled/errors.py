"""The one error type for bad unlabelled data: its message names the file and the fix."""


class UnlabeledDataError(RuntimeError):
    """Raised for missing, malformed or leaking unlabelled data."""
