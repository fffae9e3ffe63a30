"""What ``persona model list`` shows: every version of a registry with its status and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from encoders.ranker_model import read_ranker_manifest
from encoders.registry import Registry
from state.errors import ModelError


def list_versions(kind: str, root: Path) -> list[dict[str, Any]]:
    """One row per complete version, oldest first: ``serving`` (CURRENT), ``served before``
    (published once), ``rejected`` (a ranker the quality gate refused), ``not published``, or
    ``unreadable`` (a manifest that does not parse). A fine-tuned encoder shows its gate like a
    ranker; an exported base model its parity."""
    registry = Registry(root)
    current = registry.current_name()
    published = {v for _, a, v in registry.history() if a in ("publish", "rollback")}
    trial = registry.candidate()
    rows: list[dict[str, Any]] = []
    for name in registry.versions():
        row: dict[str, Any] = {"kind": kind, "version": name, "quality": "", "window": "", "created_at": ""}
        try:
            if kind == "ranker":
                m = read_ranker_manifest(root / name)
                gate = m.metrics.get("gate", {})
                cand, prod = gate.get("candidate", {}), gate.get("production", {})
                if cand:
                    row["quality"] = f"NDCG@10 {cand['ndcg@10']:.4f} vs {prod.get('ndcg@10', 0.0):.4f} ({prod.get('version', '?')})"
                t = m.training
                row["window"] = f"{t.get('format', '')} {t.get('path', '')} slice {t.get('window', '')}".strip()
                row["created_at"] = m.created_at
                row["gate_passed"] = gate.get("passed")
                row["metrics"] = msgspec.to_builtins(m.metrics)
            else:
                from encoders.artifact import read_manifest

                em = read_manifest(root / name)
                parity = f"parity min cos {em.parity.min_cos:.6f}" if em.parity.min_cos is not None else em.parity.note
                cand, prod = em.gate.get("candidate", {}), em.gate.get("production", {})
                if cand:
                    # A fine-tuned version (persona train): its gate's figures before the parity.
                    rho = cand.get("sentiment_spearman")
                    row["quality"] = (
                        f"NDCG@10 {cand['ndcg@10']:.4f} vs {prod.get('ndcg@10', 0.0):.4f} ({prod.get('version', '?')})"
                        + (f"; sentiment rho {rho:.3f} vs {prod.get('sentiment_spearman') or 0.0:.3f}" if rho is not None else "")
                        + f"; {parity}"
                    )
                    row["gate_passed"] = em.gate.get("passed")
                    row["metrics"] = {"gate": em.gate}
                else:
                    row["quality"] = parity
                t = em.training
                row["window"] = f"{em.variant} {t.get('format', '')} {t.get('path', '')} slice {t.get('window', '')}" if t else em.variant
                row["created_at"] = em.created_at
        except ModelError:
            row["status"] = "unreadable"
            rows.append(row)
            continue
        if name == current:
            row["status"] = "serving"
        elif trial is not None and name == trial[0]:
            row["status"] = "in shadow" if trial[1] == "shadow" else f"serving a {trial[2]:.0%} share"
        elif name in published:
            row["status"] = "served before"
        elif row.get("gate_passed") is False:
            row["status"] = "rejected by the gate"
        else:
            row["status"] = "not published"
        rows.append(row)
    return rows
