# config.py: this device's settings. Copy to config.py on the device and fill in; every line is optional
# (the defaults are shown). docs/NODE.md "Settings" explains each.

# Wi-Fi (ESP32/ESP8266; the unix port uses its host's network)
WIFI_SSID = None
WIFI_PASSWORD = None

# MQTT broker. On the unix port `fleet node run --broker mqtt://user:pass@host:port` overrides these.
MQTT_HOST = "127.0.0.1"
MQTT_PORT = 1883  # 8883 for TLS
MQTT_USER = None
MQTT_PASSWORD = None
MQTT_TLS = None  # {} for TLS with defaults, or {"ca": "/ca.pem", "cert": "/dev.pem", "key": "/dev.key"}
#                 (also "verify": True, "server_hostname": "broker.example")
MQTT_KEEPALIVE = 60  # seconds
MQTT_QUEUE = 32  # messages kept while offline (oldest dropped first)
MQTT_HOME = "home"  # topic root: <home>/<id>/...

# Identity. None: the hex of machine.unique_id() on a board, "unix" on the unix port.
DEVICE_ID = None
DEVICE_NAME = None  # shown in Home Assistant; default the id
DEVICE_MODEL = None  # shown in Home Assistant; default the platform

# Configuration from the config server (docs/PROTOCOL.md section 4)
RECEIVE_CONFIG = True  # ask the server; a local components.json etc. runs meanwhile
CONFIG_MAX = 1024  # largest config piece this device takes (bytes); 1024 suits an ESP8266
CONFIG_KEY = None  # HMAC key (bytes) when configs for this device are signed

# Behaviour
INTERVAL = 10  # default seconds between sensor readings
INFO_INTERVAL = 600  # seconds between <home>/<id>/info publishes
LOG_BUFFER = 20  # log lines kept while offline
WATCHDOG = 120  # seconds the event loop may stall before the node resets; 0: off
NTP_HOST = "pool.ntp.org"
DEBUG = False  # also send debug log lines
DEBUG_STOP_AFTER_EXECUTION = False  # after an uncaught error, stay in the REPL instead of resetting
