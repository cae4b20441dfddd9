metadata(description="SmartFleet sensors: htu21d, bme280, ds18b20, dht22 on the common sensor API",
         version="1.0.0")

include("../machine/manifest.py")  # the buses and the sensor base
package("components", files=("sensors/bme280.py", "sensors/dht22.py", "sensors/ds18b20.py",
                             "sensors/htu21d.py"), base_path="../..")
