class Broken:
    def __init__(self, x=1
