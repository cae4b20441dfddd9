# main.py: start the node (pysmartnode.main handles errors, the watchdog and resets).
from pysmartnode import main

main.run()
