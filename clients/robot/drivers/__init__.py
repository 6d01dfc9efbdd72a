"""Robot drivers behind one interface (``Driver``), loaded by name so optional hardware libraries stay optional.

``sim`` is pure Python and always available; ``serial`` needs pyserial and ``gpio`` needs gpiozero, each
imported only when that driver is chosen.
"""

from __future__ import annotations

import importlib
from typing import Any

from clients.robot.drivers.base import Driver, DriverError

DRIVERS: dict[str, str] = {
    "sim": "clients.robot.drivers.sim:SimDriver",
    "serial": "clients.robot.drivers.serial:SerialDriver",
    "gpio": "clients.robot.drivers.gpio:GpioDriver",
}


def load_driver(name: str, options: dict[str, Any] | None = None) -> Driver:
    """Instantiate the driver called ``name`` with its options; ``DriverError`` names what is missing."""
    target = DRIVERS.get(name)
    if target is None:
        raise DriverError(f"unknown driver {name!r} (known: {', '.join(sorted(DRIVERS))})")
    module_name, cls_name = target.split(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    driver: Driver = cls(**(options or {}))
    return driver


__all__ = ["DRIVERS", "Driver", "DriverError", "load_driver"]
