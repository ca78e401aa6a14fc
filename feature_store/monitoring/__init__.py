"""Drift and data quality: training reference profiles vs served values, river detectors, an alert log.

All in process and free of web code; serving exposes `ServiceMonitor.report()`.
"""

from __future__ import annotations

from feature_store.monitoring.alerts import Alert, AlertLog, alert_log_path
from feature_store.monitoring.detectors import DetectorSpec, StreamDetectors
from feature_store.monitoring.drift import DriftThresholds, FeatureDrift, feature_drift, ks_2samp, psi
from feature_store.monitoring.monitor import ServiceMonitor, load_profiles, profiles_path, save_profiles
from feature_store.monitoring.profile import FeatureProfile, profile_column, profile_table
from feature_store.monitoring.quality import QualityIssue, QualityRule, check_quality

__all__ = [
    "Alert",
    "AlertLog",
    "DetectorSpec",
    "DriftThresholds",
    "FeatureDrift",
    "FeatureProfile",
    "QualityIssue",
    "QualityRule",
    "ServiceMonitor",
    "StreamDetectors",
    "alert_log_path",
    "check_quality",
    "feature_drift",
    "ks_2samp",
    "load_profiles",
    "profile_column",
    "profile_table",
    "profiles_path",
    "psi",
    "save_profiles",
]
