# boot.py: runs first on every boot. Kept tiny: no network here, main.py brings the node up.
import gc

gc.collect()
