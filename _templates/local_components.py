# local_components.py: a config that lives on the node itself, frozen into the firmware or copied next to
# main.py. The node runs it when it has no config from the server (nor components.json / components.d/),
# and meanwhile asks the server, whose config takes precedence once received (docs/NODE.md).
#
# COMPONENTS is the loader format: "_order" lists the names in load order; each name has its "package"
# (a leading "." is our `components` package), "component" (a class, or a function for a service) and
# "constructor_args". A string argument naming a component loaded earlier is replaced by that component
# ("i2c": "i2c" hands the bus to the sensor). docs/COMPONENTS.md lists every component and its arguments.
#
# Instead of the dict, this file may build components itself: COMPONENTS = {} and code below that
# constructs them, e.g. `Relay("pump", pin=14)` after `from components.machine.relay import Relay`.

COMPONENTS = {
    "_order": ["ram", "i2c", "climate", "heater", "thermostat", "status_led"],
    # free heap, every minute
    "ram": {"package": ".machine.ram", "component": "RAM", "constructor_args": {"interval": 60}},
    # the I2C bus on GPIO 5 (SCL) and 4 (SDA)
    "i2c": {"package": ".machine.i2c", "component": "I2C", "constructor_args": {"pin_scl": 5, "pin_sda": 4}},
    # a BME280 at 0x76 on that bus, read every 30 s, temperature to 0.1 °C, humidity to 1 %
    "climate": {"package": ".sensors.bme280", "component": "BME280",
                "constructor_args": {"i2c": "i2c", "interval": 30,
                                     "precision": {"temperature": 1, "humidity": 0, "pressure": 1}}},
    # a relay module on GPIO 14 (active low), driving the heater
    "heater": {"package": ".machine.relay", "component": "Relay",
               "constructor_args": {"pin": 14, "restore": False}},
    # keeps the room at 21 °C with the two above
    "thermostat": {"package": ".devices.thermostat", "component": "Thermostat",
                   "constructor_args": {"sensor": "climate", "switch": "heater", "target": 21.0}},
    # the on-board LED (GPIO 2, lit at level 0 on most ESP8266 boards)
    "status_led": {"package": ".machine.led", "component": "LED",
                   "constructor_args": {"pin": 2, "active_low": True}},
}
