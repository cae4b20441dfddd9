__version__ = "1.0.0"


async def blink(pin, period=0.5, *more):
    pass
