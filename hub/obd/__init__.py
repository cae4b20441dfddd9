"""The OBD-II bridge's parts: the adapter thread (`link`), JSON encoding (`encode`), the hub.hjson
section (`options`) and Home Assistant units (`ha`). The job itself is `hub.jobs.obd.ObdJob`."""
