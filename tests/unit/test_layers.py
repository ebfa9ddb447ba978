"""The layers of docs/architecture.md, checked against the imports: an arrow never points up."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "printd"

#: Lower numbers are lower floors. Every printd module must be listed (a new one is placed here).
LAYERS: dict[str, int] = {}
for layer, modules in enumerate(
    [
        # pure cores: rules and data, no I/O of their own
        "model protocol agents inputs config jobs.delivery jobs.pending breakers.core"
        " ratelimit cache cluster.base cluster.membership cluster.resp cluster.target gateway.limits"
        " gateway.handshake gateway.frames __init__ breakers gateway jobs cluster http logs systemd",
        # backends: the only I/O to the dependencies
        "store store.base store.group store.sql store.sqlite store.postgres store.migrate"
        " breakers.shell breakers.metrics"
        " cluster.local cluster.redis cluster.redis_client",
        # services
        "jobs.service printers status cluster.node cluster.routing auth metrics",
        # edges
        "http.router http.listener gateway.connection gateway.hub gateway.server jobs.api monitoring",
        # entry points
        "app cli __main__",
    ]
):
    for name in modules.split():
        LAYERS[name] = layer


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("printd."):
            found.add(node.module.removeprefix("printd."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("printd.") for a in node.names if a.name.startswith("printd."))
    return found


def test_every_module_has_a_floor_and_imports_only_at_or_below_it() -> None:
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        name = module_name(path)
        assert name in LAYERS, f"printd/{name}: place it in a layer (tests/unit/test_layers.py)"
        for target in imports(path):
            floor = LAYERS.get(target, LAYERS.get(target.rsplit(".", 1)[0]))
            assert floor is not None, f"{name} imports unknown printd.{target}"
            if floor > LAYERS[name]:
                upward.append(f"{name} (floor {LAYERS[name]}) imports {target} (floor {floor})")
    assert upward == []
