"""The worker failure the controller handles, in a module of its own so that code driving
simulated devices imports no torch."""


class WorkerError(RuntimeError):
    """A worker raised, or died."""
