"""One exception tree. Every message says what happened and how to fix it, on one line,
because the CLI prints it as-is instead of a traceback."""


class ClipExportError(Exception):
    """Base of every error a user can cause and fix."""


class MissingDependencyError(ClipExportError):
    """An optional library is not installed."""


class SourceError(ClipExportError):
    """The model could not be loaded: unknown name, bad checkpoint, offline download."""


class ExportError(ClipExportError):
    """Tracing or checking an ONNX graph failed."""


class ManifestError(ClipExportError):
    """manifest.json is missing, malformed, of an unknown schema, or does not match the files."""


class InputError(ClipExportError):
    """A user-supplied input (image, text file, folder) is unusable."""


class ParityError(ClipExportError):
    """Exported outputs do not match the reference within tolerance."""
