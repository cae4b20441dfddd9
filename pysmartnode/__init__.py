# pysmartnode: the SmartFleet node runtime (MicroPython; runs unchanged on ESP32, ESP8266 and the unix port).
import sys

__version__ = "0.1.0"

# "esp32", "esp8266", or "unix" for the MicroPython unix port (virtual hardware).
platform = sys.platform if sys.platform in ("esp32", "esp8266", "rp2") else "unix"
VIRTUAL = platform == "unix"
