"""Exception types shared across maskfit."""


class MaskfitError(Exception):
    """Base class of every error maskfit raises on purpose."""


class DataError(MaskfitError, ValueError):
    """Bad or missing input data; the message names the file (and line) at fault."""


class ModelError(MaskfitError):
    """A model name cannot be resolved or has no mask map."""


class MaskfileError(MaskfitError):
    """A mask file is corrupt, truncated, or belongs to another base model."""


class RunError(MaskfitError):
    """A run directory is missing or incomplete."""


class ConfigError(MaskfitError, ValueError):
    """An option that cannot work here: an unknown or absent device, a precision the device lacks, a bad value."""


class DependencyError(MaskfitError):
    """A command needs an optional package that is not installed; the message says what to install."""
