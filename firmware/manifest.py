# Freeze manifest for MicroPython's own build (docs/FIRMWARE.md):
#   make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/smartfleet/firmware/manifest.py
# freezes the port's own modules, asyncio, the node runtime `pysmartnode` (without pysmartnode/virtual,
# the unix port's virtual hardware) and the component library. Only some components:
#   include("/path/to/smartfleet/firmware/manifest.py", components=("__init__.py", "machine/relay.py", …))
# which is the manifest `fleet firmware bundle --device ID` writes next to its bundle (OUT/manifest.py).
# Options:
#   base        the manifest this one builds on (default: the port's, "$(PORT_DIR)/boards/manifest.py")
#   components  component files relative to components/ (default: all of them)
# ruff: noqa: F821  (include, package, options: MicroPython's build gives a manifest these names)
import os

options.defaults(base="$(PORT_DIR)/boards/manifest.py", components=None)

include(options.base)
# The node runs on asyncio; the ESP8266 port's manifest leaves it out (its 2 MiB board adds it), so it
# is named here: an include already made is skipped.
include("$(MPY_DIR)/extmod/asyncio")

# Paths below are relative to this file's folder (MicroPython's build runs a manifest from its folder).
_ROOT = ".."


def _sources(package, skip=()):
    found = []
    for folder, dirs, files in os.walk(os.path.join(_ROOT, package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(folder, os.path.join(_ROOT, package)).replace(os.sep, "/")
        for f in sorted(files):
            path = f if rel == "." else rel + "/" + f
            if f.endswith(".py") and f != "manifest.py" and not any(path.startswith(s) for s in skip):
                found.append(path)
    return found


package("pysmartnode", files=_sources("pysmartnode", skip=("virtual/",)), base_path=_ROOT)
package("components", files=list(options.components or _sources("components")), base_path=_ROOT)
