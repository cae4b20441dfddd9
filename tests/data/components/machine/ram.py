__version__ = "1.0.0"


async def ram(interval=600, topic=None):
    pass
