"""One exception tree. Every message says what happened and how to fix it, on one line, because
the CLI prints it as-is instead of a traceback. The class says what kind of failure it was, and
the CLI's exit code follows from the class (`exit_code`):

  1  the result failed its gate (parity below tolerance)
  2  a user mistake: bad input, path, name, option, or an artifact that does not match its files
  3  the environment: a missing library, no GPU, no network
  4  a step failed on valid input: tracing, building an engine, or running a backend
"""


def first_line(exc: BaseException, limit: int = 300, fallback: str | None = None) -> str:
    """An exception's first line, cut to `limit` characters: libraries wrap the useful sentence in
    pages of detail, and our messages are one line. Empty messages fall back to the type's name."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__ if fallback is None else fallback)[:limit]


EXIT_GATE = 1
EXIT_USER = 2
EXIT_ENVIRONMENT = 3
EXIT_STEP = 4


class ClipExportError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = EXIT_USER


# -- 2: user mistakes ------------------------------------------------------------------------
class InputError(ClipExportError):
    """A user-supplied input (image, text file, folder, option value) is unusable."""


class SourceError(ClipExportError):
    """The model could not be loaded: unknown name, bad checkpoint, wrong folder."""


class ManifestError(ClipExportError):
    """manifest.json (or a sidecar) is missing, malformed, of an unknown schema, or does not match the files."""


# -- 3: the environment ------------------------------------------------------------------------
class EnvironmentProblem(ClipExportError):
    """Something this machine lacks; the same command works where it is present."""

    exit_code = EXIT_ENVIRONMENT


class MissingDependencyError(EnvironmentProblem):
    """An optional library is not installed."""


class DeviceUnavailableError(EnvironmentProblem):
    """No GPU (or no driver) visible to this process, or the GPU cannot run what was asked."""


class DiskFull(EnvironmentProblem):
    """The output's disk filled up (ENOSPC) while a file was written."""


class OfflineError(EnvironmentProblem, SourceError):
    """A download was needed and the network (or the hub) is not reachable."""


# -- 4: a step failed on valid input -----------------------------------------------------------
class StepFailed(ClipExportError):
    exit_code = EXIT_STEP


class ExportError(StepFailed):
    """Tracing, converting or checking an ONNX graph failed."""


class BuildError(StepFailed):
    """TensorRT could not parse the graph or build the engine."""


class BackendError(StepFailed):
    """A backend failed to run a graph or engine, or produced NaN/Inf."""


# -- 1: the gate -------------------------------------------------------------------------------
class ParityError(ClipExportError):
    """Exported outputs do not match the reference within tolerance."""

    exit_code = EXIT_GATE
