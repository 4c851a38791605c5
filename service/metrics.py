"""Prometheus metrics of the service and the CodeCarbon energy tracker."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

# Label value for requests that name a class which is not loaded, so a client
# cannot grow the label set by inventing class names.
UNKNOWN_CLASS = "unknown"
OUTCOMES = ("success", "client_error", "server_error")

REQUESTS = Counter(
    "aexad_requests",
    "Explanation requests by class and HTTP status code.",
    ["class", "status"],
)
REQUEST_DURATION = Histogram(
    "aexad_request_duration_seconds",
    "Time from receiving an explanation request to sending its response.",
    ["class", "outcome"],
)
MODEL_DURATION = Histogram(
    "aexad_model_duration_seconds",
    "Duration of one model call, which may explain a batch of images.",
    ["class"],
)
QUEUE_WAIT = Histogram(
    "aexad_queue_wait_seconds",
    "Time an image waits in its class's batcher before the model call starts.",
    ["class"],
)
BATCH_SIZE = Histogram(
    "aexad_batch_size",
    "Images explained by one model call.",
    ["class"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
UPLOAD_BYTES = Histogram(
    "aexad_upload_bytes",
    "Size of the uploaded image files.",
    ["class"],
    buckets=tuple(2**power for power in range(10, 27, 2)),  # 1 KiB to 64 MiB
)
MODELS_LOADED = Gauge("aexad_models_loaded", "Classes whose model is loaded and serving.")
MODELS_FAILED = Gauge("aexad_models_failed", "Class folders in the model store that failed to load.")
ENERGY = Counter(
    "aexad_energy_joules",
    "Energy used by this process since start-up as estimated by CodeCarbon, in joules.",
)
EMISSIONS = Counter(
    "aexad_emissions_grams",
    "Emissions of this process since start-up as estimated by CodeCarbon, in grams of CO2 equivalent.",
)


def outcome_of(status_code: int) -> str:
    """Map an HTTP status code to the `outcome` label."""
    if status_code >= 500:
        return "server_error"
    if status_code >= 400:
        return "client_error"
    return "success"


def register_classes(class_names: Iterable[str]) -> None:
    """Create the labelled series of these classes so they are exported at zero."""
    for name in [*class_names, UNKNOWN_CLASS]:
        for outcome in OUTCOMES:
            REQUEST_DURATION.labels(name, outcome)
        REQUESTS.labels(name, "200")
        UPLOAD_BYTES.labels(name)
        if name != UNKNOWN_CLASS:
            MODEL_DURATION.labels(name)
            QUEUE_WAIT.labels(name)
            BATCH_SIZE.labels(name)


# CodeCarbon reports kWh and kg, and the metrics use joules and grams.
JOULES_PER_KWH = 3.6e6
GRAMS_PER_KG = 1000.0


class EnergyTracker:
    """One CodeCarbon tracker per process that feeds the energy and emissions counters.

    CodeCarbon measures in its own background thread every `interval_s`
    seconds and hands each cumulative total to `live_out`, which adds the
    growth since the previous total to the counters. Requests never touch it.
    Any failure inside CodeCarbon (power counters that cannot be read, a
    missing country) is logged and leaves the counters where they are.
    """

    def __init__(self, *, country_iso_code: str, interval_s: float) -> None:
        self.country_iso_code = country_iso_code
        self.interval_s = interval_s
        self._tracker = None
        self._last_kwh = 0.0
        self._last_kg = 0.0
        # CodeCarbon's thread and the stopping thread both report totals.
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start measuring, or log the failure and carry on without energy figures."""
        try:
            from codecarbon import OfflineEmissionsTracker
            from codecarbon.output_methods.base_output import BaseOutput

            owner = self

            class _CounterOutput(BaseOutput):
                def live_out(self, total, delta) -> None:
                    owner.add_totals(total.energy_consumed, total.emissions)

                def out(self, total, delta) -> None:
                    owner.add_totals(total.energy_consumed, total.emissions)

            self._tracker = OfflineEmissionsTracker(
                country_iso_code=self.country_iso_code,
                measure_power_secs=self.interval_s,
                # Hand every measurement to the counters, and write no file.
                api_call_interval=1,
                output_methods=[],
                output_handlers=[_CounterOutput()],
                # "process" attributes CPU and RAM power by this process's share.
                tracking_mode="process",
                # Several workers or test apps may run side by side, and without
                # this CodeCarbon rejects a second tracker on the same machine.
                allow_multiple_runs=True,
                log_level="error",
                project_name="aexad-service",
            )
            self._tracker.start()
        except Exception:  # noqa: BLE001 - energy figures are optional, serving is not
            logger.exception("CodeCarbon tracker failed to start; energy and emissions metrics stay at zero")
            self._tracker = None
            return
        logger.info(
            "CodeCarbon tracker started: country %s, one measurement every %.1f s",
            self.country_iso_code,
            self.interval_s,
        )

    def add_totals(self, energy_kwh: float, emissions_kg: float) -> None:
        """Add the growth of CodeCarbon's cumulative totals to the counters."""
        try:
            energy_kwh = float(energy_kwh)
            emissions_kg = float(emissions_kg)
        except (TypeError, ValueError):
            logger.warning("CodeCarbon reported non-numeric totals %r, %r", energy_kwh, emissions_kg)
            return
        with self._lock:
            if energy_kwh > self._last_kwh:
                ENERGY.inc((energy_kwh - self._last_kwh) * JOULES_PER_KWH)
                self._last_kwh = energy_kwh
            if emissions_kg > self._last_kg:
                EMISSIONS.inc((emissions_kg - self._last_kg) * GRAMS_PER_KG)
                self._last_kg = emissions_kg

    def stop(self) -> None:
        """Take a last measurement and stop the tracker's thread."""
        if self._tracker is None:
            return
        try:
            self._tracker.stop()
        except Exception:  # noqa: BLE001 - shutting down must not fail on CodeCarbon
            logger.exception("CodeCarbon tracker failed to stop cleanly")
        self._tracker = None


# The counters are process-wide, so every app in the process shares one tracker.
_shared_lock = threading.Lock()
_shared_tracker: EnergyTracker | None = None
_shared_users = 0


def acquire_energy_tracker(*, country_iso_code: str, interval_s: float) -> EnergyTracker:
    """Return the process's tracker, starting it for the first user.

    Later callers share the running tracker and its settings.
    """
    global _shared_tracker, _shared_users
    with _shared_lock:
        if _shared_tracker is None:
            _shared_tracker = EnergyTracker(country_iso_code=country_iso_code, interval_s=interval_s)
            _shared_tracker.start()
        _shared_users += 1
        return _shared_tracker


def release_energy_tracker() -> None:
    """Stop the process's tracker when its last user releases it."""
    global _shared_tracker, _shared_users
    with _shared_lock:
        _shared_users = max(0, _shared_users - 1)
        if _shared_users == 0 and _shared_tracker is not None:
            _shared_tracker.stop()
            _shared_tracker = None
