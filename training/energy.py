"""Energy and CO₂ measurement of training and evaluation with CodeCarbon."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

logger = logging.getLogger(__name__)

# ISO 3166-1 alpha-3 code of the electricity grid used for the carbon
# intensity when no other is given. Set --country to the grid you run on.
DEFAULT_COUNTRY = "USA"

# CodeCarbon's CPU measurement modes that read real power counters.
_MEASURED_CPU_MODES = {"intel_rapl", "intel_power_gadget", "apple_powermetrics", "amd_rapl"}


@dataclass
class EnergyReport:
    """Energy and emissions of one measured block of work."""

    kwh: float = 0.0
    emissions_grams: float = 0.0
    seconds: float = 0.0
    country: str = DEFAULT_COUNTRY
    cpu_mode: str = "unknown"
    estimated: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)


def _cpu_mode(tracker: Any) -> str:
    # CodeCarbon keeps its hardware list private; read it defensively so an
    # upgrade that renames it only loses this detail.
    for device in getattr(tracker, "_hardware", []) or []:
        if type(device).__name__ == "CPU":
            return str(getattr(device, "_mode", "unknown"))
    return "unknown"


@contextmanager
def track_energy(*, country: str = DEFAULT_COUNTRY, enabled: bool = True) -> Iterator[EnergyReport]:
    """Measure the energy of the enclosed block; the yielded report is filled on exit.

    When the CPU's power counters are unreadable (common in containers and
    virtual machines), CodeCarbon estimates CPU power from its load and a
    default TDP; the report marks that with ``estimated=True`` and a note. Any
    CodeCarbon failure is logged and leaves zeros with a note; it never stops
    the measured work.
    """
    report = EnergyReport(country=country)
    start = time.perf_counter()
    tracker = None
    if enabled:
        try:
            from codecarbon import OfflineEmissionsTracker

            # CodeCarbon logs INFO and WARNING lines on every start, for
            # example that several trackers may run at once, before it applies
            # its own log_level. What matters to a user is in the report.
            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            tracker = OfflineEmissionsTracker(
                country_iso_code=country,
                save_to_file=False,
                log_level="error",
                tracking_mode="process",
                measure_power_secs=5,
            )
            tracker.start()
        except Exception as error:  # CodeCarbon raises many kinds on odd hosts
            logger.warning("CodeCarbon could not start (%s); energy is not measured", error)
            report.note = f"not measured: CodeCarbon failed to start ({error})"
            tracker = None
    else:
        report.note = "not measured: disabled"

    try:
        yield report
    finally:
        report.seconds = time.perf_counter() - start
        if tracker is not None:
            try:
                emissions_kg = tracker.stop() or 0.0
                data = tracker.final_emissions_data
                report.kwh = float(getattr(data, "energy_consumed", 0.0) or 0.0)
                report.emissions_grams = float(emissions_kg) * 1000.0
                report.cpu_mode = _cpu_mode(tracker)
                report.estimated = report.cpu_mode not in _MEASURED_CPU_MODES
                report.note = (
                    f"CPU power estimated by CodeCarbon ({report.cpu_mode} mode): the power counters were unreadable"
                    if report.estimated
                    else f"CPU power measured ({report.cpu_mode})"
                )
            except Exception as error:
                logger.warning("CodeCarbon failed to stop (%s); energy is not measured", error)
                report.note = f"not measured: CodeCarbon failed ({error})"
