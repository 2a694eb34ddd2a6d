"""Threats of the project's threat table not attacked elsewhere: URL inputs are never fetched (SSRF), files in an
extensions folder never run, and SECURITY.md names only tests that exist."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Listener:
    """A loopback socket that records every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_image_urls_are_never_fetched(api):
    listener = Listener()
    try:
        for url in (f"http://127.0.0.1:{listener.port}/x.png", f"https://localhost:{listener.port}/x.png"):
            r = api.post("/sdapi/v1/img2img", json={"init_images": [url], "steps": 2, "width": 64, "height": 64})
            assert r.status_code == 422 and r.json()["field"].startswith("init_images"), r.text
            r = api.post("/sdapi/v1/img2img", json={"init_images": [url], "mask": url})
            assert r.status_code == 422
            r = api.post("/sdapi/v1/png-info", json={"image": url})
            assert r.status_code == 422
    finally:
        listener.close()
    assert listener.connections == 0


def test_files_in_an_extensions_folder_never_run(data_dir, live_server):
    marker = data_dir / "extension-ran"
    for folder in (data_dir / "extensions" / "evil", data_dir / "extensions"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "install.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
        (folder / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    server = live_server(nowebui=False)
    import httpx

    assert httpx.get(server.url + "/internal/ping", timeout=30).status_code == 200
    assert not marker.exists()


def test_security_md_names_only_tests_that_exist():
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    files = set(re.findall(r"`(tests/[\w/]+\.py)`", text))
    assert files, "SECURITY.md lists the tests of each threat"
    for name in files:
        assert (ROOT / name).is_file(), name
    for name, test in re.findall(r"`(tests/[\w/]+\.py)` \(`(test_\w+)`", text):
        assert f"def {test}" in (ROOT / name).read_text(encoding="utf-8"), (name, test)
