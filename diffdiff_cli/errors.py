"""The two ways a diffdiff command fails, each with its exit code."""


class DiffdiffError(Exception):
    """A failure the user can act on; the message is printed as one line."""

    exit_code = 1


class InputError(DiffdiffError):
    """Bad usage or bad input (a missing file, an unknown model, a value out of range): exit 2."""

    exit_code = 2


class RunError(DiffdiffError):
    """The input was fine but the run failed (NaNs, a model that would not load): exit 1."""

    exit_code = 1
