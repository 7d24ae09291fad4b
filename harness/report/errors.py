"""The report's one error, apart so that every module of the report can raise it and the package
itself (whose defaults the command line reads) loads nothing else."""


class ReportError(RuntimeError):
    """A run directory the report cannot be made from; the message says why."""
