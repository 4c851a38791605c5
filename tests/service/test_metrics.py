"""Metric helpers and the CodeCarbon energy tracker."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from service import metrics
from service.metrics import EnergyTracker


def counter_value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.mark.parametrize(
    ("status_code", "outcome"),
    [(200, "success"), (404, "client_error"), (413, "client_error"), (500, "server_error"), (503, "server_error")],
)
def test_outcome_of_status(status_code: int, outcome: str) -> None:
    assert metrics.outcome_of(status_code) == outcome


def test_register_classes_exports_zero_series() -> None:
    metrics.register_classes(["registered-class"])
    labels = {"class": "registered-class", "outcome": "success"}
    assert REGISTRY.get_sample_value("aexad_request_duration_seconds_count", labels) == 0.0
    assert REGISTRY.get_sample_value("aexad_batch_size_count", {"class": "registered-class"}) == 0.0


def test_energy_totals_become_joules_and_grams() -> None:
    tracker = EnergyTracker(country_iso_code="FRA", interval_s=1.0)
    joules = counter_value("aexad_energy_joules_total")
    grams = counter_value("aexad_emissions_grams_total")

    tracker.add_totals(0.001, 0.0005)  # 1 Wh and 0.5 g
    tracker.add_totals(0.001, 0.0005)  # the same totals again add nothing
    tracker.add_totals(0.002, 0.0004)  # a lower total never makes a counter fall

    assert counter_value("aexad_energy_joules_total") - joules == pytest.approx(7200.0)
    assert counter_value("aexad_emissions_grams_total") - grams == pytest.approx(0.5)


def test_energy_ignores_non_numeric_totals() -> None:
    tracker = EnergyTracker(country_iso_code="FRA", interval_s=1.0)
    joules = counter_value("aexad_energy_joules_total")
    tracker.add_totals(None, "n/a")
    assert counter_value("aexad_energy_joules_total") == joules


def test_energy_tracker_starts_and_stops_without_error() -> None:
    # Power counters are often unreadable in containers. Start and stop must
    # still return, with or without figures.
    tracker = metrics.acquire_energy_tracker(country_iso_code="FRA", interval_s=60.0)
    assert metrics.acquire_energy_tracker(country_iso_code="DEU", interval_s=5.0) is tracker
    metrics.release_energy_tracker()
    metrics.release_energy_tracker()
    assert tracker._tracker is None
