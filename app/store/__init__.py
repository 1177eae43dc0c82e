"""The store: the one place that holds queries. Each area of the data model has its own mixin module."""

from app.store.base import StoreBase
from app.store.bulk import BulkMixin
from app.store.dashboard import DashboardMixin
from app.store.executions import ExecutionsMixin
from app.store.experiments import ExperimentsMixin
from app.store.jobs import JobsMixin
from app.store.problems import ProblemsMixin
from app.store.relabel import RelabelMixin
from app.store.report import ReportMixin
from app.store.rollouts import RolloutsMixin
from app.store.verifier import VerifierMixin


class Store(
    ProblemsMixin,
    ExecutionsMixin,
    RolloutsMixin,
    JobsMixin,
    VerifierMixin,
    RelabelMixin,
    ExperimentsMixin,
    DashboardMixin,
    ReportMixin,
    BulkMixin,
    StoreBase,
):
    """``Store(url)`` or ``Store.from_settings()``; methods open their own transaction unless given one."""


__all__ = ["Store"]
