"""The ELM327 emulator of the OBD tests and bench: `hub.obd.emulator` (shared with `fleet sim`)."""

from hub.obd.emulator import Emulator

__all__ = ["Emulator"]
