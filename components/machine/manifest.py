metadata(description="SmartFleet components of the board: ram, stats, switch, relay, button, led, pwm, adc, "
         "i2c and one-wire buses", version="1.0.0")

package("components", files=("__init__.py", "machine/__init__.py", "machine/adc.py", "machine/button.py",
                             "machine/i2c.py", "machine/led.py", "machine/onewire.py", "machine/pwm.py",
                             "machine/ram.py", "machine/relay.py", "machine/stats.py", "machine/switch.py",
                             "sensors/__init__.py", "sensors/filters.py"), base_path="../..")
