"""User-facing errors: one line naming the file and the problem; the CLI prints them plainly."""


class LensfinderError(Exception):
    """Base class; the CLI turns it into a one-line message and exit status 2."""


class DataError(LensfinderError, ValueError):
    """A data file or layout that cannot be used."""


class ModelFileError(LensfinderError, ValueError):
    """A model file that is unsafe, corrupt, or made for other inputs."""


class ConfigError(LensfinderError, ValueError):
    """A configuration that cannot be used."""
