"""The engine's exception types: everything the engine raises on purpose derives from EngineError.

Callers (CLI, GUI) catch EngineError and show its message; anything else is a bug.
"""


class EngineError(Exception):
    """Base class for every error the engine reports to its user."""


class ModelFormatError(EngineError):
    """A model file or directory is corrupt, truncated, inconsistent or of an unsupported kind.

    The message always names the offending file and the problem.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsupportedArchitecture(ModelFormatError):
    """The checkpoint declares an architecture this engine does not implement."""

    def __init__(self, path, architecture: str, supported):
        self.architecture = architecture
        super().__init__(
            path,
            f"unsupported architecture {architecture!r}; supported: {', '.join(sorted(supported))}",
        )


class TemplateError(EngineError):
    """A chat template failed to render, or tried to leave jinja2's sandbox."""


class ContextOverflow(EngineError):
    """The prompt (plus what is asked to generate) does not fit in the model's context."""
