metadata(description="SmartFleet devices: buzzer, thermostat", version="1.0.0")

include("../machine/manifest.py")
package("components", files=("devices/__init__.py", "devices/buzzer.py", "devices/thermostat.py"),
        base_path="../..")
