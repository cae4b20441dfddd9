"""The uploader against a real asyncssh SFTP server (tests/sftpserver.py): verification, resume, backoff,
lost files; and the SIGKILL test with the uploader in a subprocess (`fleet hub upload drain`)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from sftpserver import SftpServer, sftp_servers  # noqa: F401 (the sftp fixture)

from hub.upload import UploadError
from hub.upload.queue import Queue
from hub.upload.sftp import SftpTarget
from hub.upload.transfer import Transfer, sha256_of
from hub.upload.uploader import Uploader

ROOT = Path(__file__).resolve().parents[1]


def make_files(folder: Path, sizes: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, size in enumerate(sizes):
        p = folder / f"loop.20261121T0500{i:02d}Z.b1.{i}.mp4"
        p.write_bytes(os.urandom(size))
        files.append(p)
    return files


def remote_files(server: SftpServer) -> dict[str, bytes]:
    return {str(p.relative_to(server.root)): p.read_bytes() for p in server.root.rglob("*") if p.is_file()}


async def drain(uploader: Uploader, timeout: float = 30) -> str:
    task = asyncio.create_task(uploader.run(), name="test-uploader")
    try:
        return await asyncio.wait_for(uploader.wait_empty(), timeout)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("exec_sha256", [True, False], ids=["sha256", "size-only"])
async def test_upload_verifies_and_records_how(sftp, tmp_path: Path, exec_sha256: bool) -> None:
    server = await sftp(exec_sha256=exec_sha256)
    files = make_files(tmp_path / "camera", [1, 300_000, 5_000_001])
    done: list[dict[str, object]] = []

    async def on_done(info: dict[str, object]) -> None:
        done.append(info)

    with Queue(tmp_path / "q.db") as queue:
        up = Uploader(queue, {"nas": SftpTarget("nas", **server.target_config())}, hub_id="car", on_done=on_done)
        for f in files:
            up.add(f, f.stat().st_size, sha256_of(f))
        assert await drain(up) == "empty"
        rows = queue.rows()
    want = "sha256" if exec_sha256 else "size"
    assert [r["verified"] for r in rows] == [want] * 3 and {r["state"] for r in rows} == {"done"}
    assert remote_files(server) == {f"car/{f.name}": f.read_bytes() for f in files}  # no .part left
    assert [d["complete"] for d in done] == [True] * 3


async def test_resume_continues_a_partial_file_and_replaces_a_wrong_one(sftp, tmp_path: Path) -> None:
    server = await sftp()
    big, other = make_files(tmp_path / "camera", [12 << 20, 6 << 20])
    (server.root / "car").mkdir()
    # as a crash leaves them: big half written (checkpointed at 4 MiB), other's part holding wrong bytes
    (server.root / "car" / f"{big.name}.part").write_bytes(big.read_bytes()[: 5 << 20])
    (server.root / "car" / f"{other.name}.part").write_bytes(os.urandom(4 << 20))
    with Queue(tmp_path / "q.db") as queue:
        queue.add(big, ["nas"], sha256=sha256_of(big))
        queue.add(other, ["nas"], sha256=sha256_of(other))
        rows = {r["path"]: r["id"] for r in queue.rows()}
        queue.checkpoint(rows[str(big)], 4 << 20)
        queue.checkpoint(rows[str(other)], 4 << 20)
        up = Uploader(queue, {"nas": SftpTarget("nas", **server.target_config())}, hub_id="car")
        assert await drain(up) == "empty"
        sent = up.sent
    assert remote_files(server) == {f"car/{big.name}": big.read_bytes(), f"car/{other.name}": other.read_bytes()}
    # big went on from its checkpoint (8 MiB more); other started over (6 MiB)
    assert sent == (8 << 20) + (6 << 20)


async def test_size_only_resume_never_leaves_a_gap(sftp, tmp_path: Path) -> None:
    """Without a remote hash, the part is cut back to the checkpoint: bytes past it may have holes."""
    server = await sftp(exec_sha256=False)
    (big,) = make_files(tmp_path / "camera", [9 << 20])
    (server.root / "car").mkdir()
    holed = bytearray(big.read_bytes()[: 8 << 20])
    holed[5 << 20: 6 << 20] = bytes(1 << 20)  # a block that was never written before the crash
    (server.root / "car" / f"{big.name}.part").write_bytes(holed)
    with Queue(tmp_path / "q.db") as queue:
        queue.add(big, ["nas"], sha256=sha256_of(big))
        queue.checkpoint(queue.rows()[0]["id"], 4 << 20)  # type: ignore[arg-type]
        up = Uploader(queue, {"nas": SftpTarget("nas", **server.target_config())}, hub_id="car")
        assert await drain(up) == "empty"
        assert queue.rows()[0]["verified"] == "size"
    assert (server.root / "car" / big.name).read_bytes() == big.read_bytes()


async def test_unreachable_target_keeps_the_queue_then_uploads(sftp, tmp_path: Path) -> None:
    server = await sftp()
    config = server.target_config()
    await server.close()  # the NAS is away
    files = make_files(tmp_path / "camera", [100_000, 200_000])
    with Queue(tmp_path / "q.db") as queue:
        up = Uploader(queue, {"nas": SftpTarget("nas", **{**config, "timeout": 2})}, hub_id="car",
                      retry_first=0.2, retry_max=0.5)
        for f in files:
            up.add(f)
        task = asyncio.create_task(up.run(), name="test-uploader")
        try:
            assert await asyncio.wait_for(up.wait_empty(), 10) == "unreachable"
            assert queue.pending() == (2, 300_000) and up.status()["reachable"] == {"nas": False}
            assert all(f.exists() for f in files)
            await server.start(port=config["port"])  # back home: the NAS answers again
            up.flush()
            assert await asyncio.wait_for(up.wait_empty(), 20) == "empty"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert {r["state"] for r in queue.rows()} == {"done"}
    assert remote_files(server) == {f"car/{f.name}": f.read_bytes() for f in files}


async def test_uploads_wait_for_the_home_network(sftp, tmp_path: Path) -> None:
    """`when_reachable`: the target answers, but its probe (the home router) does not: nothing goes."""
    server = await sftp()
    router = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = router.sockets[0].getsockname()[1]
    router.close()
    await router.wait_closed()  # away from home: the router's port is closed
    (f,) = make_files(tmp_path / "camera", [50_000])
    with Queue(tmp_path / "q.db") as queue:
        up = Uploader(queue, {"nas": SftpTarget("nas", **server.target_config())}, hub_id="car",
                      when_reachable={"nas": ("127.0.0.1", port)}, retry_first=0.2, retry_max=0.5)
        up.add(f)
        task = asyncio.create_task(up.run(), name="test-uploader")
        try:
            assert await asyncio.wait_for(up.wait_empty(), 10) == "unreachable"
            assert remote_files(server) == {}
            router = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)  # home again
            up.flush()
            assert await asyncio.wait_for(up.wait_empty(), 10) == "empty"
        finally:
            router.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert remote_files(server) == {f"car/{f.name}": f.read_bytes()}


async def test_a_file_deleted_before_upload_is_logged_as_lost(sftp, tmp_path: Path, caplog) -> None:
    server = await sftp()
    gone, kept = make_files(tmp_path / "camera", [1000, 2000])
    with Queue(tmp_path / "q.db") as queue:
        up = Uploader(queue, {"nas": SftpTarget("nas", **server.target_config())}, hub_id="car")
        up.add(gone)
        up.add(kept)
        gone.unlink()  # the camera's hard limit evicted it
        with caplog.at_level(logging.ERROR, logger="hub.upload"):
            assert await drain(up) == "empty"
        assert [r["state"] for r in queue.rows()] == ["lost", "done"]
        assert queue.prune(time.time() + 1) == 1  # the lost row goes; the done one stays (its file is there)
        assert [r["state"] for r in queue.rows()] == ["done"]
    assert any("LOST" in r.message and gone.name in r.message for r in caplog.records)


async def test_wrong_host_key_is_refused(sftp, tmp_path: Path) -> None:
    server = await sftp()
    other = await sftp()
    (f,) = make_files(tmp_path / "camera", [1000])
    target = SftpTarget("nas", **{**server.target_config(), "known_hosts": str(other.known_hosts)})
    with Queue(tmp_path / "q.db") as queue:
        queue.add(f, ["nas"])
        item = queue.next("nas")
        assert item is not None
        with pytest.raises(UploadError) as err:
            await target.upload(Transfer(item, f"car/{f.name}", lambda n: None, lambda n: None))
    assert "refused" in str(err.value) or "Host key" in str(err.value)
    assert remote_files(server) == {}


@pytest.mark.slow
async def test_sigkill_mid_upload_then_restart_completes_every_file_once(sftp, tmp_path: Path) -> None:
    """The uploader runs in a subprocess (`fleet hub upload drain`), killed with SIGKILL mid-file."""
    server = await sftp(rate=12e6)  # 12 MB/s: each 8 MiB file takes ~0.7 s
    files = make_files(tmp_path / "hub-data" / "camera", [8 << 20] * 4)
    cfg = tmp_path / "hub.hjson"
    cfg.write_text(_hjson(tmp_path / "hub-data", server.target_config()))
    with Queue(tmp_path / "hub-data" / "upload.db") as queue:
        for f in files:
            queue.add(f, ["nas"], sha256=sha256_of(f))

    kills = held = kept = 0
    for _ in range(3):  # kill it twice at different points, then let it finish
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleet.cli", "hub", "upload", "drain", "--config", str(cfg), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        if kills < 2:
            # kill it part-way through a file (the 2nd, then the 3rd), past a checkpoint or two
            mark = server.received + (10 << 20)
            while server.received < mark and proc.returncode is None:
                await asyncio.sleep(0.02)
            assert proc.returncode is None, (await proc.stderr.read()).decode()[-2000:]  # type: ignore[union-attr]
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            kills += 1
            settled = -1
            while server.received != settled:  # the server still applies the writes it had buffered
                settled = server.received
                await asyncio.sleep(0.5)
            with Queue(tmp_path / "hub-data" / "upload.db") as queue:
                for row in queue.rows("queued"):
                    remote = server.root / "car" / Path(str(row["path"])).name
                    part = remote.with_name(remote.name + ".part")
                    have = part.stat().st_size if part.exists() else remote.stat().st_size if remote.exists() else 0
                    held += have  # what the server holds of unfinished files
                    kept += min(int(row["offset"]), have)  # type: ignore[call-overload]  # what a restart keeps
            continue
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert out.decode().strip() == "empty"
    assert kills == 2
    # each restart went on from its last checkpoint: only what lay past it was sent again
    assert kept > 0
    assert server.received <= 4 * (8 << 20) + held - kept
    assert remote_files(server) == {f"car/{f.name}": f.read_bytes() for f in files}  # each once, no .part
    with Queue(tmp_path / "hub-data" / "upload.db") as queue:
        assert [r["verified"] for r in queue.rows()] == ["sha256"] * 4
    for f in files:
        assert hashlib.sha256((server.root / "car" / f.name).read_bytes()).hexdigest() == sha256_of(f)


def _hjson(workdir: Path, target: dict[str, object]) -> str:
    import json

    return json.dumps({"id": "car", "workdir": str(workdir), "jobs": ["upload"],
                       "upload": {"targets": {"nas": target}, "retry": {"first": 0.2, "max": 1}}})
