# Sensors on the common sensor API of pysmartnode.component.Sensor, with the filters of sensors/filters.py.
