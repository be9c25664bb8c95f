"""What the SCADA servers say they are: OPC UA's BuildInfo and Modbus's Read Device
Identification (FC43 / MEI 14) both come from here, so an integrator's asset list shows one
product, whichever protocol it asked."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from ... import __version__

VENDOR = "factory_mas project"
PRODUCT_CODE = "factory_mas"
PRODUCT_NAME = "factory_mas smart-factory monitoring backend"
VERSION = __version__


def build_date() -> datetime:
    """When this copy was built: the time its package metadata was written (by the wheel
    build or `pip install -e`), else that of this file in a bare source tree. The version
    alone does not tell two builds of an unreleased tree apart."""
    path = Path(__file__)
    with contextlib.suppress(metadata.PackageNotFoundError):
        dist = metadata.distribution(PRODUCT_CODE)
        found = [f for f in dist.files or () if f.name in ("METADATA", "PKG-INFO")]
        if found and (written := Path(str(dist.locate_file(found[0])))).is_file():
            path = written
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)
