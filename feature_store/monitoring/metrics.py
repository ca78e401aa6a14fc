"""Prometheus metrics for drift and data quality (registered once, on the default registry).

Label values are feature-service, feature and stream names: bounded by the
repo's definitions, never by traffic.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["ALERTS", "FEATURE_KS", "FEATURE_NULL_RATE", "FEATURE_PSI", "STREAM_DRIFTS"]

FEATURE_PSI = Gauge("featurestream_feature_psi", "PSI of served values vs the training reference",
                    ["service", "feature"])
FEATURE_KS = Gauge("featurestream_feature_ks_statistic", "KS statistic of served values vs the training reference",
                   ["service", "feature"])
FEATURE_NULL_RATE = Gauge("featurestream_feature_served_null_rate", "Null rate of served values in the window",
                          ["service", "feature"])
STREAM_DRIFTS = Counter("featurestream_stream_drifts", "Changes signalled by river drift detectors",
                        ["service", "stream"])
ALERTS = Counter("featurestream_monitoring_alerts", "Alerts written to the alert log", ["service", "kind"])
