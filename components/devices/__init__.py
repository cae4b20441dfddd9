# Devices built from other components: a buzzer on a PWM pin, a thermostat from any sensor and any switch.
