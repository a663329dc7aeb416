"""Load probe for deploys: constant-rate HTTP plus WebSocket clients; reports anything lost."""

from .probe import Probe
from .process import ProbeProcess
from .report import HttpSummary, HttpWindowStats, ProbeReport, WsSummary
from .settings import ProbeError, ProbeSettings
from .stats import LatencySummary, percentile

__all__ = [
    "HttpSummary",
    "HttpWindowStats",
    "LatencySummary",
    "Probe",
    "ProbeError",
    "ProbeProcess",
    "ProbeReport",
    "ProbeSettings",
    "WsSummary",
    "percentile",
]
