"""The hardware layer's virtual parts on the MicroPython VM (no broker): what a component sees through
`pysmartnode.hw`, and what the sim link would publish."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fleet.upy import MicroPython

SCRIPT = r'''
import json
from binascii import hexlify, unhexlify
from pysmartnode import hw, virtual
from pysmartnode.virtual import Model

class Chip(Model):
    defaults = {"temperature": 20.0}
    def __init__(self, opts=None):
        Model.__init__(self, opts)
        self.got = []
    def write(self, buf): self.nack(); self.got.append(bytes(buf))
    def read(self, n): self.nack(); return bytes([int(self.inputs["temperature"])] * n)
    def read_mem(self, reg, n): self.nack(); return bytes([reg] * n)
    def write_mem(self, reg, buf): self.got.append((reg, bytes(buf)))
    def reset(self): pass
    def measure(self): self.nack(); return self.inputs["temperature"], 55.0

r = {}
def err(f):
    try:
        f()
    except (OSError, ValueError) as e:
        return "%s %s" % (type(e).__name__, e)

chip = virtual.register_model("i2c", 0x40, Chip())
ow1 = virtual.register_model("onewire", "28ff4a1c33160456", Chip({"temperature": 30}))
ow2 = virtual.register_model("onewire", "28aa000000000001", Chip())
virtual.register_model("dht", 5, Chip())
r["names"] = sorted(virtual._by_name)

relay = hw.pin(4, hw.OUT, value=1)
relay.off(); relay.off()
r["out"] = {k: v.decode() for k, v in virtual._out.items()}
virtual._out.clear()
button = hw.pin(6, hw.IN, hw.PULL_UP)
r["pulled_up"] = button.value()
edges = []
button.irq(lambda p: edges.append(p.value()), hw.IRQ_FALLING)
for level in (b"0", b"1", b"0"):
    virtual.sim_input("pin6", level)
r["edges"] = edges
r["bad_level"] = err(lambda: virtual.sim_input("pin6", b"high"))
a = hw.adc(3)
virtual.sim_input("adc3", b"40000")
r["adc"] = a.read_u16()
r["bad_adc"] = err(lambda: virtual.sim_input("adc3", b"70000"))
pwm = hw.pwm(7, duty_u16=1000)
pwm.duty_u16(2000)
r["pwm"] = virtual._out.get("pwm7/duty").decode()

bus = hw.i2c(scl=5, sda=4)
r["same_bus"] = bus is hw.i2c(scl=5, sda=4)
r["scan"] = bus.scan()
r["read"] = list(bus.readfrom(0x40, 2))
bus.writeto(0x40, b"\xf3")
r["mem"] = list(bus.readfrom_mem(0x40, 7, 2))
r["nobody"] = err(lambda: bus.readfrom(0x41, 1))
virtual.sim_input("chip-0x40", b'{"temperature": 25, "fail": "nack"}')
r["nack"] = err(lambda: bus.readfrom(0x40, 1))
r["scan_nack"] = bus.scan()
r["unknown_input"] = err(lambda: virtual.sim_input("chip-0x40", b'{"pressure": 1}'))
r["unknown_part"] = err(lambda: virtual.sim_input("nothing-0x99", b"{}"))

ow = hw.onewire(12)
r["roms"] = sorted(hexlify(bytes(x)).decode() for x in ow.scan())
ow.select_rom(unhexlify("28ff4a1c33160456"))
ow.writebyte(0xBE)
r["ow_read"] = list(ow.read(2))
ow.reset(); ow.writebyte(0xCC); ow.writebyte(0x44)
r["skip_rom_reached"] = [m.got[-1] == b"\x44" for m in (ow1, ow2)]
r["crc"] = ow.crc8(b"\x02\x1c\xb8\x01\x00\x00\x00\xa2")  # the ROM example of Maxim AN27

d = hw.dht(5)
d.measure()
r["dht"] = [d.temperature(), d.humidity()]
r["no_dht"] = err(lambda: hw.dht(9).measure())
print("RESULT " + json.dumps(r))
'''


def test_virtual_parts(upy: Callable[..., MicroPython], tmp_path: Path) -> None:
    out = upy(tmp_path / "fs").run_code(SCRIPT).stdout
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    assert line, out
    r = json.loads(line[7:])
    assert r["names"] == ["chip-0x40", "chip-28aa000000000001", "chip-28ff4a1c33160456", "chip-pin5"]
    assert r["out"] == {"pin4/level": "0"} and r["pwm"] == "2000"
    assert r["pulled_up"] == 1 and r["edges"] == [0, 0]
    assert r["bad_level"] == "ValueError pin level must be 0 or 1"
    assert r["adc"] == 40000 and r["bad_adc"] == "ValueError adc reading must be 0-65535"
    assert r["same_bus"] and r["scan"] == [0x40] and r["read"] == [20, 20] and r["mem"] == [7, 7]
    assert r["nobody"] == "OSError [Errno 19] ENODEV" and r["nack"] == "OSError [Errno 19] ENODEV"
    assert r["scan_nack"] == []
    assert "unknown input 'pressure'" in r["unknown_input"] and "no virtual part" in r["unknown_part"]
    assert r["roms"] == ["28aa000000000001", "28ff4a1c33160456"]
    assert r["ow_read"] == [30, 30] and r["skip_rom_reached"] == [True, True] and r["crc"] == 0
    assert r["dht"] == [20.0, 55.0] and r["no_dht"] == "OSError [Errno 110] ETIMEDOUT"
