"""Filters on what a sensor publishes, as ESPHome offers them; the base of every sensor in this package.

- `window`: publish the moving average of the last `window` readings (1: no averaging). A failed
  reading empties the window, so an average never hides that the sensor stopped answering.
- `delta`: besides the regular publish every `publish_interval`, publish as soon as a value has moved
  by at least `delta` since the last publish (a number for every value, or a dict by value name).
- `throttle`: at most one publish every `throttle` seconds, whatever asks for it.

Home Assistant marks the entities unavailable (`expire_after`) when no reading arrives for two
publish intervals, so a sensor that stops answering is not shown with its last value.
"""

import time

from pysmartnode.component import Sensor

__version__ = "1.0.0"


class FilteredSensor(Sensor):
    def __init__(self, name, window=1,
                 delta=None,  # type: any
                 throttle=None,  # type: float|None
                 precision=1,  # type: any
                 offset=0,  # type: any
                 **kwargs):
        if not isinstance(window, int) or window < 1:
            raise ValueError("window: must be a whole number >= 1, not %r" % (window,))
        if delta is not None and not isinstance(delta, (int, float, dict)):
            raise ValueError("delta: must be a number or a dict by value name, not %r" % (delta,))
        if throttle is not None and (not isinstance(throttle, (int, float)) or throttle < 0):
            raise ValueError("throttle: must be a number of seconds >= 0, not %r" % (throttle,))
        self._window = window
        self._samples = []
        self._delta = delta
        self._throttle = throttle
        self._sent = None  # the values last published
        # precision and offset are restated here only to declare their type: a number, or a dict by value
        Sensor.__init__(self, name, precision=precision, offset=offset, **kwargs)

    def _fix(self, vname, v):
        p = self._param(self._prec, vname, 1)
        return int(round(v)) if p == 0 else round(v, p)

    def _num(self, vname, v):
        p = self._param(self._prec, vname, 1)
        return ("%." + str(p) + "f") % v if p else "%d" % v

    def _text(self, vals):
        """The state payload with each value at its precision (a float's repr would show 990.4299999999999)."""
        if len(self.VALUES) == 1:
            k = self.VALUES[0][0]
            return self._num(k, vals[k])
        return "{" + ",".join('"%s":%s' % (k, self._num(k, vals[k])) for k, _u, _c in self.VALUES) + "}"

    def _moved(self, vals):
        if self._delta is None or self._sent is None:
            return False
        for k, v in vals.items():
            d = self._param(self._delta, k, None)
            if d is not None and abs(v - self._sent.get(k, v)) >= d:
                return True
        return False

    async def read(self, publish=True):
        vals = await Sensor.read(self, False)
        if vals is None:
            self._samples = []
            return None
        if self._window > 1:
            s = self._samples
            s.append(vals)
            if len(s) > self._window:
                s.pop(0)
            vals = {k: sum(x[k] for x in s) / len(s) for k in vals}
        vals = {k: self._fix(k, v) for k, v in vals.items()}
        self._last = vals
        if publish or self._moved(vals):
            now = time.ticks_ms()
            if self._throttle and self._published is not None and \
                    time.ticks_diff(now, self._published) < self._throttle * 1000:
                return vals
            await self.publish(self._text(vals))
            self._published = now
            self._sent = vals
        return vals

    def discovery(self):
        expire = int(2 * max(self.publish_interval, self._throttle or 0) + 10)
        out = Sensor.discovery(self)
        for _p, _o, d in out:
            d["expire_after"] = expire
        return out
