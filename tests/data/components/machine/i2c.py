__version__ = "1.0.0"


class I2C:
    def __init__(self, pin_scl, pin_sda, freq=100000):
        pass
