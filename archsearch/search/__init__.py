"""The search: the space as Optuna sees it, distinct sampling, the study's storage and session, trials counted and
retried, the run loop and the per-trial pipeline."""

from archsearch.search.faults import Interrupted, RunStopped, io_failure
from archsearch.search.loop import optimize
from archsearch.search.retries import counts, fail_dead, fail_trial, finished, queue_retry, retried
from archsearch.search.session import Session, SpecChanged, open_session, open_study, sampler
from archsearch.search.storage import artifacts_dir, open_storage, sqlite_path, storage_url

__all__ = [
    "Interrupted",
    "RunStopped",
    "Session",
    "SpecChanged",
    "artifacts_dir",
    "counts",
    "fail_dead",
    "fail_trial",
    "finished",
    "io_failure",
    "open_session",
    "open_storage",
    "open_study",
    "optimize",
    "queue_retry",
    "retried",
    "sampler",
    "sqlite_path",
    "storage_url",
]
