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

import os
import tempfile
from pathlib import Path

from encoders.artifact import MANIFEST_FILE, Manifest, Variant, read_manifest
from state.errors import ModelError

CURRENT_FILE = "CURRENT"


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

    def publish(self, version: str) -> Path:
        """Point CURRENT at ``version`` atomically; the version must already be complete."""
        path = self.root / version
        if "/" in version or version.startswith(".") or not (path / MANIFEST_FILE).is_file():
            raise ModelError(f"registry {self.root}: cannot publish {version!r}: not a complete version")
        fd, tmp = tempfile.mkstemp(prefix=".CURRENT-", dir=self.root)
        try:
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide CURRENT from workers running as another user
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(version + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / CURRENT_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
