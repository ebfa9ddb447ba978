"""printd in-process: `printd.app.App` built from a Config and run in the test's own trio loop.

For tests where a subprocess is not the point: the same composition root `printd run` uses,
SQLite in tmp_path, port 0 (the bound port comes back through `task_status`), reached over
loopback by printctl's `WsClient` and by httpx. httpx is blocking and the server shares the
test's event loop, so every HTTP call runs in a worker thread (`RunningApp.get/post`).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from printd.app import App
from printd.config import Config, build_config
from tests.conftest import SECRET


@dataclass
class RunningApp:
    app: App
    port: int
    #: cancels this app's `run` (its store is closed on the way out)
    scope: trio.CancelScope
    stopped: trio.Event = field(default_factory=trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def request(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        h = {"Authorization": f"Bearer {token}"} if token else {}
        h.update(headers or {})

        def call() -> httpx.Response:
            return httpx.request(method, self.url + path, headers=h, json=json, timeout=30)

        return await trio.to_thread.run_sync(call)

    async def get(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, token, **kw)

    async def post(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, token, **kw)


def app_config(data_dir: Path, **sections: Any) -> Config:
    """A development config on SQLite in `data_dir`, port 0, the tests' secret; `sections`
    override (`jobs={"test_timeout": 1.0}`)."""
    raw: dict[str, Any] = {
        "data_dir": str(data_dir),
        "instance_id": "inproc-1",
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"jwt_secret": SECRET},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values} if isinstance(values, dict) else values
    return build_config(raw)


StartApp = Callable[..., Any]


@pytest.fixture
async def start_app(tmp_path: Path) -> AsyncIterator[StartApp]:
    """`await start_app(**sections)` builds an App and runs it until the test ends (or
    `running.scope.cancel()`); `load_config=` is passed to the App (what SIGHUP re-reads)."""
    thresholds = gc.get_threshold()
    count = 0

    async with trio.open_nursery() as nursery:

        async def start(load_config: Callable[[], Config] | None = None, **sections: Any) -> RunningApp:
            nonlocal count
            count += 1
            app = App(app_config(tmp_path / f"app{count}", **sections), load_config=load_config)
            scope = trio.CancelScope()
            stopped = trio.Event()

            async def run(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    with scope:
                        await app.run(task_status=task_status)
                finally:
                    stopped.set()

            port = await nursery.start(run)
            return RunningApp(app, port, scope, stopped)

        yield start
        nursery.cancel_scope.cancel()
    # App.run tunes the garbage collector for a long-lived server; give the test process its own back
    gc.unfreeze()
    gc.set_threshold(*thresholds)
