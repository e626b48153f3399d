"""Incidents: from anomalous windows to one notification per problem (pure Python + numpy, no Spark).

Post-processing of the detectors' scores, apart from the detectors themselves:
:mod:`incidents.rules` reads the configuration (rules, per-application
overrides, maintenance windows), :mod:`incidents.machine` is the per-(application,
detector) state machine the job's per-bucket step and the backtest both call;
:mod:`incidents.paging` is what each transition is to a receiver (the
notifier's keep-firing rule, also what bench/incident_quality.py counts).
"""

from incidents.machine import (
    RECORD_FIELDS,
    Feedback,
    IncidentState,
    Scored,
    StreamKey,
    Transitions,
    incident_id,
    maintenance_mask,
    process,
)
from incidents.rules import IncidentConfigError, IncidentSettings, Maintenance, Rules, parse_settings

__all__ = [
    "RECORD_FIELDS",
    "Feedback",
    "IncidentConfigError",
    "IncidentSettings",
    "IncidentState",
    "Maintenance",
    "Rules",
    "Scored",
    "StreamKey",
    "Transitions",
    "incident_id",
    "maintenance_mask",
    "parse_settings",
    "process",
]
