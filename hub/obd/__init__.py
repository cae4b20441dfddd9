"""The OBD-II bridge's parts: the adapter worker process (`worker`, run by `process.Worker`) and its
polling thread (`link`), JSON encoding (`encode`), the hub.hjson section (`options`) and Home Assistant
units (`ha`). The job itself is `hub.jobs.obd.ObdJob`; docs/OBD.md explains it all."""
