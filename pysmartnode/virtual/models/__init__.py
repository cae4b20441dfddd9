# Virtual chip models for the unix port: each answers its bus the way the real part does, so the drivers in
# `components/sensors/` run unchanged against them. `pysmartnode.virtual` places them on the virtual buses
# (its `Model` base defines the bus interface and the `fail` input); `board.json` names them by module:
# htu21d, bme280 (I2C), ds18b20 (one-wire), dht22 (a pin). Each module's `Model` is its chip.
import random

from pysmartnode.virtual import Model


class SensorModel(Model):
    """A chip measuring physical values that a test sets on `_sim/<id>/<name>/set`. Readings drift
    slowly around the set point, within `SPREAD`, as a real room does."""

    SPREAD = {"temperature": 0.1, "humidity": 0.5, "pressure": 0.2}

    def __init__(self, opts=None):
        self._drift = {}
        Model.__init__(self, opts)

    def set_inputs(self, d):
        if isinstance(d, dict):
            for k, v in d.items():
                if k in self.SPREAD and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                    raise ValueError("%s must be a number, not %r" % (k, v))
        Model.set_inputs(self, d)
        for k in d:
            self._drift[k] = 0.0

    def value(self, key):
        """The set point plus a bounded random walk."""
        s = self.SPREAD[key]
        d = self._drift.get(key, 0.0) + (random.random() - 0.5) * s / 2
        d = s if d > s else -s if d < -s else d
        self._drift[key] = d
        return self.inputs[key] + d

    def failing(self, kind):
        return self.inputs["fail"] == kind


class I2CModel(SensorModel):
    """A sensor on the I2C bus: a register access is, as on the wire, a write of the register address
    (and the data) followed, for a read, by a read."""

    def read_mem(self, reg, n):
        self.write(bytes((reg,)))
        return self.read(n)

    def write_mem(self, reg, buf):
        self.write(bytes((reg,)) + buf)
