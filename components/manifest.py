# Freeze manifest of the component library (micropython-lib style): a firmware manifest takes it with
# include("<repo>/components/manifest.py"), or one kind alone with include(".../components/sensors/manifest.py").
metadata(description="SmartFleet node components: machine, sensors, devices", version="1.0.0")

# components/__init__.py is frozen by machine/manifest.py, which every kind includes
include("machine/manifest.py")
include("sensors/manifest.py")
include("devices/manifest.py")
