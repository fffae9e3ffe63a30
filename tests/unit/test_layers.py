"""The rooms import downward only: state < scoring, encoders < export, stream_app < deploy, bench.

Read from the source (every import statement, lazy ones inside functions included), so an
upward edge fails here before it becomes a cycle at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: What each room may import besides itself and third-party code.
ALLOWED: dict[str, set[str]] = {
    "state": set(),
    "scoring": {"state"},
    "encoders": {"state"},
    "export": {"state", "encoders"},
    "stream_app": {"state", "scoring", "encoders", "export"},
    "deploy": {"state", "scoring", "encoders", "stream_app"},
    "bench": {"state", "scoring", "encoders", "export", "stream_app", "deploy"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_no_room_imports_upward() -> None:
    rooms = set(ALLOWED) | {"tests"}
    bad: list[str] = []
    for room, allowed in ALLOWED.items():
        files = sorted((REPO / room).rglob("*.py"))
        assert files, room
        for path in files:
            for target in _imports(path) & rooms:
                if target != room and target not in allowed:
                    bad.append(f"{path.relative_to(REPO)} imports {target}")
    assert bad == []


def test_stream_app_imports_neither_bench_nor_tests() -> None:
    for path in (REPO / "stream_app").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not _imports(path) & {"bench", "tests", "deploy"}, path
        assert "import_module(" not in text, path  # no string imports hiding an edge
