# The SmartFleet component library (MicroPython). A device config names a component by package, with a
# leading "." for this package: `.machine.relay` / `Relay`, `.sensors.bme280` / `BME280`, … The table of
# every component, its arguments, topics and Home Assistant platform is docs/COMPONENTS.md.
