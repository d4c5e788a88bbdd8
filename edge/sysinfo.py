"""What the device is and how busy it is, from psutil. Calls read /proc and /sys: run
them in a thread."""

from __future__ import annotations

import platform
from pathlib import Path

import psutil

from edge.profile import DeviceProfile
from outpost import wire


def capabilities(profile: DeviceProfile, data_dir: Path) -> wire.Capabilities:
    """Measure the device; the accelerator comes from its profile."""
    return wire.Capabilities(
        cores=psutil.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
        disk_bytes=psutil.disk_usage(str(data_dir)).total,
        accelerator=profile.capabilities.accelerator,
        arch=platform.machine(),
    )


class LoadSampler:
    """Samples system load and the agent's own footprint."""

    def __init__(self, data_dir: Path, sensor: str = "") -> None:
        self._data_dir = str(data_dir)
        self._sensor = sensor
        self._process = psutil.Process()
        psutil.cpu_percent(interval=None)  # prime: the next call measures since now

    def sample(self) -> wire.Load:
        """Return the load since the previous sample."""
        return wire.Load(
            cpu_percent=min(100.0, psutil.cpu_percent(interval=None)),
            memory_percent=psutil.virtual_memory().percent,
            disk_percent=psutil.disk_usage(self._data_dir).percent,
            rss_bytes=self._process.memory_info().rss,
            temperature_c=self._temperature(),
        )

    def _temperature(self) -> float | None:
        read = getattr(psutil, "sensors_temperatures", None)
        if read is None:  # not every platform has sensors
            return None
        try:
            sensors = read()
        except OSError:
            return None
        if self._sensor:
            sensors = {k: v for k, v in sensors.items() if k == self._sensor}
        readings = [t.current for entries in sensors.values() for t in entries if t.current]
        return max(readings) if readings else None
