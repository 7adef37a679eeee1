"""The baseline job of `small_uploads`: RQ's own cost per job, with nothing to import but this."""


def noop() -> None:
    """Do nothing; the job's cost is RQ's alone (dequeue, fork, bookkeeping)."""
