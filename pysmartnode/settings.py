# Device settings: defaults, then the device's own `config.py` (firmware/device/config_example.py documents
# each), then on the unix port FLEET_BROKER / FLEET_HOME / FLEET_NODE_ID / FLEET_CA … from the environment (set by
# `fleet node run`), then the `_settings` piece of the config received from the server (config.cur/_settings.json).
import json
from pysmartnode import platform, VIRTUAL

DEFAULTS = {
    "WIFI_SSID": None, "WIFI_PASSWORD": None,
    "MQTT_HOST": "127.0.0.1", "MQTT_PORT": 1883, "MQTT_USER": None, "MQTT_PASSWORD": None,
    "MQTT_TLS": None, "MQTT_KEEPALIVE": 60, "MQTT_QUEUE": 32, "MQTT_HOME": "home",
    "DEVICE_ID": None, "DEVICE_NAME": None, "DEVICE_MODEL": None,
    "RECEIVE_CONFIG": True, "CONFIG_MAX": 1024, "CONFIG_KEY": None,
    "INTERVAL": 10, "INFO_INTERVAL": 600, "LOG_BUFFER": 20, "WATCHDOG": 120,
    "NTP_HOST": "pool.ntp.org", "DEBUG": False, "DEBUG_STOP_AFTER_EXECUTION": False,
}
# What the server may change in `_settings`: never the network settings that let it reach the device.
SERVER_KEYS = ("INTERVAL", "INFO_INTERVAL", "LOG_BUFFER", "DEBUG", "WATCHDOG", "DEVICE_NAME", "DEVICE_MODEL")


class Settings:
    pass  # attributes only: no methods, so this module can be unloaded after boot


def apply_server(s, d):
    for k, v in d.items():
        if k.upper() in SERVER_KEYS:
            setattr(s, k.lower(), v)
        else:
            s.ignored.append(k)


def _default_id():
    if VIRTUAL:
        return "unix"
    import machine
    import binascii
    return binascii.hexlify(machine.unique_id()).decode()


def _broker_url(vals, url):
    # mqtt://user:pass@host:port
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    if "@" in rest:
        cred, rest = rest.rsplit("@", 1)
        user, _, pw = cred.partition(":")
        vals["MQTT_USER"], vals["MQTT_PASSWORD"] = user, pw or None
    host, _, port = rest.partition(":")
    vals["MQTT_HOST"] = host
    vals["MQTT_PORT"] = int(port) if port else (8883 if url.startswith("mqtts") else 1883)
    if url.startswith("mqtts") and not vals["MQTT_TLS"]:
        vals["MQTT_TLS"] = {}


def load(server_file="config.cur/_settings.json"):
    vals = dict(DEFAULTS)
    bad = []  # logged once logging runs: a wrong setting falls back to its default, never stops the node
    try:
        import config  # the device's config.py
        for k in DEFAULTS:
            if hasattr(config, k):
                v = getattr(config, k)
                d = DEFAULTS[k]
                if d is not None and v is not None and type(v) is not type(d) and \
                        not (isinstance(d, (int, float)) and isinstance(v, (int, float)) and not isinstance(v, bool)):
                    bad.append("config.py: %s = %r is not a %s, using %r" % (k, v, type(d).__name__, d))
                else:
                    vals[k] = v
    except ImportError:
        pass
    except Exception as e:  # a config.py that does not even run: the defaults hold
        bad.append("config.py: %s: %s" % (type(e).__name__, e))
    if VIRTUAL:
        import os
        url = os.getenv("FLEET_BROKER")
        if url:
            _broker_url(vals, url)
        if vals["MQTT_TLS"] is not None:  # FLEET_CA / FLEET_CERT / FLEET_KEY: `fleet node run --ca …`
            for k in ("ca", "cert", "key"):
                if os.getenv("FLEET_" + k.upper()):
                    vals["MQTT_TLS"][k] = os.getenv("FLEET_" + k.upper())
        vals["MQTT_HOME"] = os.getenv("FLEET_HOME") or vals["MQTT_HOME"]
        vals["DEVICE_ID"] = os.getenv("FLEET_NODE_ID") or vals["DEVICE_ID"]
    vals["DEVICE_ID"] = vals["DEVICE_ID"] or _default_id()
    i = vals["DEVICE_ID"]
    if not (0 < len(i) <= 32 and all("a" <= c <= "z" or "0" <= c <= "9" or c in "_-" for c in i)) or \
            i in ("log", "config", "_sim"):
        bad.append("DEVICE_ID %r is not a valid id ([a-z0-9_-]{1,32}, not log/config/_sim): "
                   "the fleet's tools will not find this node" % i)
    s = Settings()
    for k, v in vals.items():
        setattr(s, k.lower(), v)
    s.ignored = []  # server setting keys that were refused
    s.bad = bad
    s.platform = platform
    try:
        with open(server_file) as f:
            apply_server(s, json.load(f))
    except (OSError, ValueError):
        pass  # no server settings (or a damaged file: the defaults hold)
    return s
