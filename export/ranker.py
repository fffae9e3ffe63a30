"""The trained ranker: a small network over the ranker's features, fitted with binary
cross-entropy, exported to ONNX and checked against itself before anyone may publish it.

Input: :class:`Arrays` of point-in-time examples (``stream_app.training_data`` builds them
from a replay: each positive's column labelled 1, sampled candidates of the same ranking 0).
The network is the replaced ranker's weighted sum plus ``features -> Linear(hidden) -> ReLU ->
Linear(1)`` (:class:`RankerNet`), a logit per candidate;
BCE with logits, Adam, full shuffles under a fixed seed, the best epoch kept by the loss on the
last ``holdout`` share of the positives (later in event time than everything it was fitted on),
stopping once that loss has not improved for ``patience`` epochs.
CPU by default and deterministic there (``torch.use_deterministic_algorithms``); on a GPU when
one is present and asked for.

:func:`write_version` stages ``model.onnx``, ``weights.npz``, ``golden.npz`` and the manifest
inside the registry (``.staging-*``), re-scores the golden rows with onnxruntime and refuses an
export whose scores differ from torch's by more than :data:`encoders.ranker_model.GOLDEN_TOLERANCE`.
The caller (``stream_app.train``) gates it on quality, then renames and publishes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from encoders.artifact import sha256_file
from encoders.ranker_model import (
    GOLDEN_FILE,
    GOLDEN_TOLERANCE,
    HASHED_FILES,
    MANIFEST_FILE,
    MODEL_FILE,
    WEIGHTS_FILE,
    OnnxRanker,
    RankerManifest,
)
from state.errors import ModelError

log = logging.getLogger(__name__)

HIDDEN = 16
OPSET = 17
#: Golden rows saved with the export (the loader re-scores them).
GOLDEN_ROWS = 256


@dataclass
class Arrays:
    """Examples as the trainer needs them (rows in replay order)."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]
    groups: npt.NDArray[np.int64]


@dataclass
class Fitted:
    model: nn.Module
    hidden: int
    history: dict[str, Any] = field(default_factory=dict)


class RankerNet(nn.Module):  # type: ignore[misc]  # torch ships no stubs for Module here
    """``logit = scale * (features @ prior) + bias + out(relu(hidden(features)))``.

    ``prior`` (fixed) is the ranker being replaced, the hand-set weights; ``out`` starts at
    zero, so training starts from production's order (``scale`` > 0 keeps it) and the network
    learns what to add to it. Fitted from scratch on Musical Instruments' few thousand positives,
    the same network fell short of the hand-set weights (validation NDCG@10 .068 vs .070)."""

    def __init__(self, n_features: int, hidden: int, prior: npt.NDArray[np.float64] | None = None) -> None:
        super().__init__()
        self.register_buffer("prior", torch.zeros(n_features) if prior is None else torch.tensor(prior, dtype=torch.float32))
        self.scale = nn.Parameter(torch.ones(()))
        self.bias = nn.Parameter(torch.zeros(()))
        self.hidden = nn.Linear(n_features, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        residual = self.out(torch.relu(self.hidden(features))).squeeze(-1)
        return self.scale * (features @ self.prior) + self.bias + residual


def pick_device(device: str) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def fit(
    data: Arrays,
    *,
    seed: int = 0,
    hidden: int = HIDDEN,
    epochs: int = 150,
    lr: float = 1e-2,
    batch: int = 512,
    holdout: float = 0.1,
    prior: Sequence[float] | None = None,
    weight_decay: float = 1e-4,
    patience: int = 15,
    device: str = "cpu",
    progress: bool = False,
) -> Fitted:
    """Fit the network (see the module docstring); ``prior``: the weights of the ranker it
    replaces (:class:`RankerNet`). Raises :class:`ModelError` when there is nothing to learn
    from (no positive or no negative)."""
    from tqdm import tqdm

    y = data.labels
    if not (y == 1).any() or not (y == 0).any():
        raise ModelError(f"cannot train a ranker on {len(y)} examples with {int((y == 1).sum())} positives: need both labels")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    dev = pick_device(device)
    groups = np.unique(data.groups)
    cut = groups[int(len(groups) * (1.0 - holdout))] if holdout > 0 and len(groups) > 10 else groups[-1] + 1
    fit_rows = data.groups < cut
    x_fit = torch.from_numpy(data.features[fit_rows]).to(dev)
    y_fit = torch.from_numpy(y[fit_rows]).to(dev)
    x_val = torch.from_numpy(data.features[~fit_rows]).to(dev)
    y_val = torch.from_numpy(y[~fit_rows]).to(dev)
    model = RankerNet(data.features.shape[1], hidden, None if prior is None else np.asarray(prior, dtype=np.float64)).to(dev)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    losses: list[tuple[float, float]] = []
    bar = tqdm(range(epochs), desc="train ranker", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(y_fit), generator=generator).to(dev)
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            optimiser.zero_grad()
            loss = loss_fn(model(x_fit[idx]), y_fit[idx])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        model.eval()
        with torch.no_grad():
            val = float(loss_fn(model(x_val), y_val)) if len(y_val) else total / max(len(y_fit), 1)
        losses.append((total / max(len(y_fit), 1), val))
        bar.set_postfix(train=f"{losses[-1][0]:.4f}", holdout=f"{val:.4f}")
        if best is None or val < best[0]:
            best = (val, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
        elif epoch - best[1] >= patience:
            break  # the held-out loss stopped improving
    assert best is not None
    model.load_state_dict(best[2])
    model = model.to("cpu").eval()
    history = {
        "examples": len(y),
        "positives": int((y == 1).sum()),
        "fit_examples": int(fit_rows.sum()),
        "holdout_examples": int((~fit_rows).sum()),
        "epochs": epochs,
        "epochs_run": len(losses),
        "patience": patience,
        "best_epoch": best[1],
        "holdout_bce": best[0],
        "train_bce": losses[best[1]][0],
        "bce_by_epoch": [[round(a, 6), round(b, 6)] for a, b in losses],
        "lr": lr,
        "prior": None if prior is None else [float(x) for x in prior],
        "weight_decay": weight_decay,
        "batch": batch,
        "device": str(dev),
    }
    return Fitted(model=model, hidden=hidden, history=history)


def scores(fitted: Fitted, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The torch model's scores (logits) for rows of features."""
    with torch.no_grad():
        out: npt.NDArray[np.float32] = fitted.model(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))).numpy()
    return out


def _export_onnx(fitted: Fitted, n_features: int, path: Path) -> None:
    dummy = torch.zeros(2, n_features, dtype=torch.float32)
    # The TorchScript exporter, as for the encoder: the dynamo one needs onnxscript.
    torch.onnx.export(
        fitted.model,
        (dummy,),
        str(path),
        input_names=["features"],
        output_names=["score"],
        dynamic_axes={"features": {0: "n"}, "score": {0: "n"}},
        opset_version=OPSET,
        dynamo=False,
    )


def write_version(
    fitted: Fitted,
    registry_root: Path,
    *,
    feature_names: Sequence[str],
    golden: npt.NDArray[np.float32],
    training: dict[str, Any],
    metrics: dict[str, Any],
    seed: int,
) -> tuple[Path, RankerManifest]:
    """Stage a complete version (not yet named nor published): returns the staging folder and
    its manifest. The ONNX graph must re-score ``golden`` like torch (else :class:`ModelError`
    and nothing is left behind)."""
    import onnxruntime as ort

    registry_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-ranker-", dir=registry_root))
    try:
        n_features = len(feature_names)
        _export_onnx(fitted, n_features, staging / MODEL_FILE)
        params = {k: v.detach().numpy() for k, v in fitted.model.state_dict().items()}
        np.savez(staging / WEIGHTS_FILE, **{k.replace(".", "_"): v for k, v in params.items()})
        rows = np.ascontiguousarray(golden[:GOLDEN_ROWS], dtype=np.float32)
        want = scores(fitted, rows)
        np.savez(staging / GOLDEN_FILE, features=rows, scores=want)
        created = dt.datetime.now(dt.UTC)
        digest = hashlib.sha256((staging / MODEL_FILE).read_bytes()).hexdigest()[:8]
        manifest = RankerManifest(
            version=f"ranker-{created:%Y%m%d%H%M%S}-{digest}",
            created_at=created.isoformat(timespec="seconds"),
            features=list(feature_names),
            hidden=fitted.hidden,
            sha256={name: sha256_file(staging / name) for name in HASHED_FILES},
            training=training,
            metrics={**metrics, "fit": fitted.history},
            seed=seed,
            torch=str(torch.__version__),
            onnxruntime=ort.__version__,
        )
        (staging / MANIFEST_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(manifest)))
        error = OnnxRanker(staging, manifest).golden_error()
        if not error <= GOLDEN_TOLERANCE:
            raise ModelError(f"exported ranker scores differ from torch by {error:.3g} (> {GOLDEN_TOLERANCE})")
        return staging, manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def finish_version(staging: Path, manifest: RankerManifest, gate: dict[str, Any]) -> Path:
    """Record the gate's outcome in the manifest and move the staged version to its name."""
    final = msgspec.structs.replace(manifest, metrics={**manifest.metrics, "gate": gate})
    (staging / MANIFEST_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(final)))
    target = staging.parent / manifest.version
    staging.rename(target)
    log.info("ranker version %s written: %s", manifest.version, json.dumps(gate))
    return target
