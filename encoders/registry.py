"""The encoder registry: a plain directory, meant to live on storage every worker can read
(NFS, a mounted bucket, a shared volume).

    <root>/
      minilm-l6-fp32-20260101120000-1a2b3c4d/   one immutable version per directory
        model.onnx tokenizer.json head.json golden.npy manifest.json
      CURRENT                                    the name of the version to serve

The trainer writes a version directory completely (under a temporary name, then renamed)
before it publishes it, and publishing replaces ``CURRENT`` with ``os.replace``: a reader
sees the old name or the new one, never a torn file. Workers poll ``CURRENT`` (a few
bytes) and, when the name changes, load and golden-check the new version before swapping;
if that fails (:class:`state.errors.ModelError`) they keep serving the old one.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path

from encoders.artifact import MANIFEST_FILE, Manifest, Variant, read_manifest
from state.errors import ModelError

CURRENT_FILE = "CURRENT"
#: One line per publish or rollback ("<UTC time> <action> <version>"), oldest first.
HISTORY_FILE = "HISTORY"
#: A version on trial beside CURRENT: "<version> shadow" or "<version> share <fraction>".
CANDIDATE_FILE = "CANDIDATE"


class Registry:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def current_name(self) -> str | None:
        try:
            name = (self.root / CURRENT_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    def current(self) -> Path | None:
        """The published version's directory, or None when nothing was ever published."""
        name = self.current_name()
        if name is None:
            return None
        path = self.root / name
        if not (path / MANIFEST_FILE).is_file():
            raise ModelError(f"registry {self.root}: CURRENT names {name!r}, which has no {MANIFEST_FILE}")
        return path

    def versions(self) -> list[str]:
        """Complete versions (those with a manifest), oldest name first."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()
        )

    def manifests(self) -> list[tuple[Path, Manifest]]:
        """Every complete version's directory with its manifest, oldest name first.

        The one scan of the registry: benchmarks, tests and scripts pick versions from it.
        A manifest that cannot be read raises :class:`ModelError`.
        """
        return [(self.root / name, read_manifest(self.root / name)) for name in self.versions()]

    def latest(self, variant: Variant) -> Path | None:
        """The newest complete version of ``variant`` (by the manifest's ``created_at``, then
        name), whether published or not; None when there is none."""
        found = [(m.created_at, path.name, path) for path, m in self.manifests() if m.variant == variant]
        return max(found)[2] if found else None

    def _write_current(self, version: str) -> None:
        self._write(CURRENT_FILE, version)

    def _write(self, name: str, text: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=self.root)
        try:
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from workers running as another user
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def candidate(self) -> tuple[str, str, float] | None:
        """The version on trial: ``(version, "shadow" | "share", share)``, or None."""
        try:
            parts = (self.root / CANDIDATE_FILE).read_text(encoding="utf-8").split()
        except FileNotFoundError:
            return None
        if len(parts) == 2 and parts[1] == "shadow":
            return parts[0], "shadow", 0.0
        if len(parts) == 3 and parts[1] == "share":
            try:
                return parts[0], "share", float(parts[2])
            except ValueError:
                pass
        raise ModelError(f"registry {self.root}: unreadable {CANDIDATE_FILE}: {' '.join(parts)!r}")

    def set_candidate(self, version: str, mode: str, share: float = 0.0) -> None:
        """Put ``version`` on trial beside CURRENT (workers follow within their poll period)."""
        if not (self.root / version / MANIFEST_FILE).is_file() or "/" in version or version.startswith("."):
            raise ModelError(f"registry {self.root}: cannot try {version!r}: not a complete version")
        if mode == "shadow":
            self._write(CANDIDATE_FILE, f"{version} shadow")
        elif mode == "share" and 0.0 <= share <= 1.0:
            self._write(CANDIDATE_FILE, f"{version} share {share!r}")
        else:
            raise ModelError(f"a candidate runs in shadow or on a share in [0, 1], got {mode!r} {share!r}")
        self._record(mode, version)

    def clear_candidate(self) -> None:
        (self.root / CANDIDATE_FILE).unlink(missing_ok=True)

    def publish(self, version: str) -> Path:
        """Point CURRENT at ``version`` atomically; the version must already be complete."""
        path = self.root / version
        if "/" in version or version.startswith(".") or not (path / MANIFEST_FILE).is_file():
            raise ModelError(f"registry {self.root}: cannot publish {version!r}: not a complete version")
        self._write_current(version)
        self._record("publish", version)
        return path

    def _record(self, action: str, version: str) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with (self.root / HISTORY_FILE).open("a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {action} {version}\n")
            fh.flush()
            os.fsync(fh.fileno())

    def history(self) -> list[tuple[str, str, str]]:
        """Every publish, rollback and trial (shadow, share) so far, oldest first:
        ``(UTC time, action, version)``."""
        try:
            lines = (self.root / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [(p[0], p[1], p[2]) for p in (line.split() for line in lines) if len(p) == 3]

    def served(self) -> list[str]:
        """The versions a rollback would walk back through, oldest first: every publish pushes
        its version, every rollback returns to an earlier one and drops what came after it."""
        stack: list[str] = []
        for _, action, version in self.history():
            if action == "rollback":  # back to ``version``: drop what was served after it
                if version in stack:
                    while stack[-1] != version:
                        stack.pop()
                else:
                    stack.append(version)
            elif action == "publish":
                stack.append(version)
        return stack

    def rollback(self) -> str:
        """Serve the version published before the current one again (a second rollback goes
        one further back); returns its name. Workers follow CURRENT, so every worker swaps back
        without a restart. Raises :class:`ModelError` when there is nothing to go back to."""
        current = self.current_name()
        stack = self.served()
        while stack and stack[-1] == current:
            stack.pop()
        target = next((v for v in reversed(stack) if (self.root / v / MANIFEST_FILE).is_file()), None)
        if target is None:
            raise ModelError(f"registry {self.root}: no earlier published version to roll back to (current: {current})")
        self._write_current(target)
        self._record("rollback", target)
        return target
