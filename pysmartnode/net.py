# Wi-Fi with a reconnect loop and NTP time, on boards; nothing to do on the unix port (its host's network).
import asyncio
import pysmartnode
from pysmartnode import log as _log

_l = _log.get("net")
_sta = None


async def keep_wifi(settings):
    """Keep the station connected; sync the clock by NTP once the link is up. Runs for the node's life."""
    global _sta
    if pysmartnode.VIRTUAL or not settings.wifi_ssid:
        return
    import network
    _sta = network.WLAN(network.STA_IF)
    _sta.active(True)
    while True:
        if not _sta.isconnected():
            _l.info("connecting to %s" % settings.wifi_ssid)
            _sta.connect(settings.wifi_ssid, settings.wifi_password)
            for _ in range(40):
                if _sta.isconnected():
                    break
                await asyncio.sleep_ms(500)
            if not _sta.isconnected():
                _sta.disconnect()
                await asyncio.sleep(5)
                continue
            _l.info("Wi-Fi up, %s" % _sta.ifconfig()[0])
        if not _log.synced:
            await _ntp(settings)
        await asyncio.sleep(5)


async def _ntp(settings):
    try:
        import ntptime
        ntptime.host = settings.ntp_host
        ntptime.settime()
        _log.synced = True
        _l.info("clock set by NTP")
    except Exception as e:
        _l.warning("NTP: %s" % _log.describe(e))


def add_info(d):
    if _sta is not None and _sta.isconnected():
        d["ip"] = _sta.ifconfig()[0]
        try:
            d["rssi"] = _sta.status("rssi")
        except Exception:
            pass
