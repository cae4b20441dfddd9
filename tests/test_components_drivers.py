"""The drivers' chip code and the chip models, on the MicroPython unix port, against datasheet figures.

The node tests (test_components.py) show drivers and models agreeing; these show each side right on its
own: CRCs and compensation against the worked examples of the datasheets, and the models behaving as the
chips do (conversion times, reset values, register writes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from fleet.upy import MicroPython


@pytest.fixture
def run(upy: Callable[..., MicroPython]) -> Callable[[str], Any]:
    def go(code: str) -> Any:
        done = upy().run_code("import json\n" + code)
        assert done.returncode == 0, done.stdout
        return json.loads(done.stdout.strip().splitlines()[-1])
    return go


def test_htu21d_crc_mismatch_is_an_error(run: Callable[[str], Any]) -> None:
    out = run("""
from components.sensors.htu21d import convert
try:
    convert(b'\\x68\\x3a\\x7d')
except ValueError as e:
    print(json.dumps(str(e)))
""")
    assert out == "CRC mismatch (683a 7d)"


def test_htu21d_crc_and_conversion(run: Callable[[str], Any]) -> None:
    # HTU21D datasheet, "CRC checksum": 0xDC -> 0x79, 0x683A -> 0x7C, 0x4E85 -> 0x6B
    out = run("""
from components.sensors.htu21d import crc, convert
from pysmartnode.virtual.models.htu21d import check_value
print(json.dumps([crc(b'\\xdc'), crc(b'\\x68\\x3a'), crc(b'\\x4e\\x85'), check_value(0x683A), check_value(0x4E85),
                  convert(b'\\x68\\x3a\\x7c'), convert(b'\\x4e\\x85\\x6b')]))
""")
    assert out[:5] == [0x79, 0x7C, 0x6B, 0x7C, 0x6B]
    assert out[5] == pytest.approx(44.89, abs=0.01)  # 0x683A: status bit 1 set, a humidity result
    assert out[6] == pytest.approx(7.04, abs=0.01)  # 0x4E85: a temperature result


def test_bme280_integer_compensation_datasheet_example(run: Callable[[str], Any]) -> None:
    # Bosch BMP280 datasheet 3.12: trimming T1..P9 below, adc_T 519888, adc_P 415148 -> 25.08 °C, 100653.27 Pa
    out = run("""
from components.sensors.bme280 import compensate
trim = (27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000, 75, 362, 0, 313, 50, 30)
print(json.dumps(compensate(trim, 519888, 415148, 0x8000 - 1)))
""")
    t, p, _h = out
    assert t == 2508
    # the datasheet's 100653.27 Pa comes from the floating-point formula with t_fine 128422.29; the integer
    # t_fine is 128422, for which the floating-point formula gives 100653.258
    assert p / 256 == pytest.approx(100653.27, abs=0.05)
    assert p / 256 == pytest.approx(100653.258, abs=0.01)


def test_bme280_model_registers_and_round_trip(run: Callable[[str], Any]) -> None:
    out = run("""
import time
from components.sensors.bme280 import trimming, compensate
from pysmartnode.virtual.models.bme280 import Model
m = Model({"temperature": -7.25, "humidity": 63.5, "pressure": 1021.4})
m.SPREAD = {"temperature": 0, "humidity": 0, "pressure": 0}  # no drift: compare exactly
r = {"id": m.read_mem(0xD0, 1)[0]}
trim = trimming(m.read_mem(0x88, 26), m.read_mem(0xE1, 7))
r["trim"] = trim
r["before"] = list(m.read_mem(0xF7, 8))  # reset values until a measurement
m.write(bytes((0xF2, 0x01)))
m.write(bytes((0xF4, 0x25)))  # forced, x1/x1
r["measuring"] = m.read_mem(0xF3, 1)[0] & 8
time.sleep_ms(12)
r["status"] = m.read_mem(0xF3, 1)[0] & 8
r["mode"] = m.read_mem(0xF4, 1)[0] & 3  # back to sleep after a forced measurement
d = m.read_mem(0xF7, 8)
t, p, h = compensate(trim, d[3] << 12 | d[4] << 4 | d[5] >> 4, d[0] << 12 | d[1] << 4 | d[2] >> 4, d[6] << 8 | d[7])
r["values"] = [t / 100, p / 25600, h / 1024]
m.write(bytes((0xE0, 0xB6)))
r["after_reset"] = list(m.read_mem(0xF7, 8))
print(json.dumps(r))
""")
    assert out["id"] == 0x60
    assert out["trim"] == [27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000,
                           75, 362, 0, 313, 50, 30]
    assert out["before"] == out["after_reset"] == [0x80, 0, 0, 0x80, 0, 0, 0x80, 0]
    assert (out["measuring"], out["status"], out["mode"]) == (8, 0, 0)
    t, p, h = out["values"]
    assert t == pytest.approx(-7.25, abs=0.01)
    assert p == pytest.approx(1021.4, abs=0.01)
    assert h == pytest.approx(63.5, abs=0.01)


def test_htu21d_model_conversion_time_and_user_register(run: Callable[[str], Any]) -> None:
    out = run("""
import time
from pysmartnode.virtual.models.htu21d import Model
m = Model({"temperature": 25.0})
r = {}
m.write(b'\\xf3')
try:
    m.read(3)
    r["early"] = "answered"
except OSError as e:
    r["early"] = e.args[0]
time.sleep_ms(50)
r["late"] = len(m.read(3))
r["user"] = m.read_mem(0xE7, 1)[0]
m.write(b'\\xe6\\x83')  # RH 11 bit, T 11 bit
r["user2"] = m.read_mem(0xE7, 1)[0]
r["hold"] = list(m.read_mem(0xE3, 3))  # holding the clock: answered at once
try:
    m.write(b'\\x42')
except OSError as e:
    r["unknown"] = e.args[0]
print(json.dumps(r))
""")
    assert out["early"] == 19 and out["late"] == 3
    assert out["user"] == 0x02 and out["user2"] == 0x83
    assert out["hold"][1] & 0x07 == 0  # 11-bit temperature: the low bits are zero
    assert out["unknown"] == 5


def test_ds18b20_decode_and_crc_datasheet_table(run: Callable[[str], Any]) -> None:
    # DS18B20 datasheet table 1 (12 bit), and Maxim AN27's ROM example 02 1C B8 01 00 00 00 -> CRC A2
    out = run("""
from components.sensors.ds18b20 import decode
from pysmartnode.virtual.parts import crc8
words = [0x07D0, 0x0550, 0x0191, 0x00A2, 0x0008, 0x0000, 0xFFF8, 0xFF5E, 0xFE6F, 0xFC90]
print(json.dumps([[decode(bytes((w & 0xFF, w >> 8))) for w in words], crc8(b'\\x02\\x1c\\xb8\\x01\\x00\\x00\\x00')]))
""")
    assert out[0] == [125, 85, 25.0625, 10.125, 0.5, 0, -0.5, -10.125, -25.0625, -55]
    assert out[1] == 0xA2


def test_ds18b20_model_power_on_value_and_resolution(run: Callable[[str], Any]) -> None:
    out = run("""
import time
from pysmartnode.virtual.models.ds18b20 import Model
from pysmartnode.virtual.parts import crc8
m = Model({"temperature": 21.3})
m.SPREAD = {"temperature": 0}
def scratch():
    m.write(b'\\xbe')
    return m.read(9)
r = {"power_on": list(scratch()[:2])}
m.write(b'\\x4e\\x4b\\x46\\x1f')  # 9 bit
m.write(b'\\x44')
r["early"] = list(scratch()[:2])  # conversion running: the old value
time.sleep_ms(100)
s = scratch()
r["done"] = list(s[:2])
r["crc"] = crc8(s)
print(json.dumps(r))
""")
    assert out["power_on"] == [0x50, 0x05]  # 85.0 °C
    assert out["early"] == [0x50, 0x05]
    assert out["done"] == [0x50, 0x01]  # 21.3 at 9 bit: 21.0 (0x0150), half degrees only
    assert out["crc"] == 0


def test_dht22_model_frame(run: Callable[[str], Any]) -> None:
    out = run("""
from pysmartnode.virtual.models.dht22 import Model
m = Model({"temperature": -10.1, "humidity": 65.2})
m.SPREAD = {"temperature": 0, "humidity": 0}
b = bytearray(5)
m.frame(b)
r = {"frame": list(b), "measure": m.measure()}
m.set_inputs({"temperature": 30})
r["cached"] = m.measure()  # within 2 s the part repeats its last measurement
m.set_inputs({"fail": "crc"})
try:
    m.measure()
except Exception as e:
    r["crc"] = str(e)
print(json.dumps(r))
""")
    assert out["frame"] == [0x02, 0x8C, 0x80, 0x65, (0x02 + 0x8C + 0x80 + 0x65) & 0xFF]  # sign bit, not two's compl.
    assert out["measure"] == [-10.1, 65.2]
    assert out["cached"] == [-10.1, 65.2]
    assert out["crc"] == "checksum error"
