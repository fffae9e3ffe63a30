"""encoders/: a tiny, hand-made artifact (no torch, no onnx package) through the real runtime.

The worker environment has onnxruntime but not the ``onnx`` package, so the test graph is
serialized here with a few lines of protobuf wire format: an embedding lookup
``last_hidden_state = E[input_ids]``. The pad row of E is huge, so any pooling that counts
padding shows up immediately; expected vectors are computed with plain numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

import encoders.runtime as runtime
from encoders import Encoder, EncoderInfo, Registry, load_encoder
from encoders.artifact import GOLDEN_SENTENCES, GPU_MODEL_FILE, HASHED_FILES, Head, Manifest, Parity, Variant, sha256_file
from encoders.pooling import cosine_rows, mean_pool_normalize
from state.errors import ModelError
from stream_app.settings import Settings

DIM = 8
MAX_LENGTH = 12
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
WORDS = sorted({w.strip(".,;!").lower() for s in GOLDEN_SENTENCES for w in s.split()} | {"a", "b", "c", "d"})
VOCAB = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
PAD, UNK, CLS, SEP = 0, 1, 2, 3


# --- a minimal ONNX (protobuf) writer ------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def _value_info(name: str, elem_type: int, dims: list[int | str]) -> bytes:
    shape = b"".join(_bytes(1, _int(1, d) if isinstance(d, int) else _bytes(2, d)) for d in dims)
    tensor_type = _int(1, elem_type) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def onnx_embedding_model(table: npt.NDArray[np.float32], with_token_types: bool) -> bytes:
    """ModelProto for ``last_hidden_state = Gather(table, input_ids)`` (FLOAT=1, INT64=7)."""
    tensor = b"".join(_int(1, d) for d in table.shape) + _int(2, 1) + _bytes(8, "E")
    tensor += _bytes(9, table.astype("<f4").tobytes())
    node = _bytes(1, "E") + _bytes(1, "input_ids") + _bytes(2, "last_hidden_state") + _bytes(3, "g") + _bytes(4, "Gather")
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_token_types else [])
    graph = _bytes(1, node) + _bytes(2, "tiny") + _bytes(5, tensor)
    graph += b"".join(_bytes(11, _value_info(n, 7, ["batch", "sequence"])) for n in inputs)
    graph += _bytes(12, _value_info("last_hidden_state", 1, ["batch", "sequence", table.shape[1]]))
    opset = _bytes(1, "") + _int(2, 13)
    return _int(1, 8) + _bytes(2, "persona-tests") + _bytes(7, graph) + _bytes(8, opset)


# --- the artifact -----------------------------------------------------------------------


def _table() -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(7)
    table = rng.normal(size=(len(VOCAB), DIM)).astype(np.float32)
    table[PAD] = 1000.0  # padding must never reach the pooled vector
    return table


def token_ids(text: str) -> list[int]:
    words = [w.lower() for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)]
    ids = [VOCAB.get(w, UNK) for w in words]
    return [CLS, *ids[: MAX_LENGTH - 2], SEP]


def expected(texts: list[str]) -> npt.NDArray[np.float64]:
    """The runtime's contract in plain numpy: mean over real tokens, then unit length."""
    table = _table().astype(np.float64)
    rows = [table[token_ids(t)].mean(axis=0) for t in texts]
    return np.array([r / np.linalg.norm(r) for r in rows])


def build_artifact(
    root: Path, *, with_token_types: bool = True, version: str = "tiny-fp32-1", variant: Variant = "fp32"
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(onnx_embedding_model(_table(), with_token_types))
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS), ("[SEP]", SEP)]
    )
    tok.save(str(root / "tokenizer.json"))
    w = np.linspace(-1, 1, DIM)
    (root / "head.json").write_bytes(msgspec.json.encode(Head(w=[float(x) for x in w], b=3.5, mean_rating=4.0, train_n=10)))
    np.save(root / "golden.npy", expected(list(GOLDEN_SENTENCES)).astype(np.float32))
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_token_types else [])
    write_manifest(root, version=version, inputs=inputs, variant=variant)
    return root


def write_manifest(
    root: Path, *, version: str = "tiny-fp32-1", inputs: list[str] | None = None, variant: Variant = "fp32"
) -> None:
    manifest = Manifest(
        version=version,
        variant=variant,
        sha256={name: sha256_file(root / name) for name in HASHED_FILES},
        opset=13,
        dim=DIM,
        max_length=MAX_LENGTH,
        pooling="mean",
        normalize=True,
        source="tests",
        parity=Parity(n=0, min_cos=None, mean_cos=None, checked=False, note="synthetic"),
        created_at="2026-01-01T00:00:00+00:00",
        inputs=inputs or ["input_ids", "attention_mask", "token_type_ids"],
        pad_id=PAD,
        golden_sentences=list(GOLDEN_SENTENCES),
    )
    (root / "manifest.json").write_bytes(msgspec.json.encode(manifest))


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return build_artifact(tmp_path / "tiny")


TEXTS = [
    "a b c d a b c d a",
    "great",
    "",
    "the pedal broke after two days",
    "b",
    "my daughter loves this ukulele and the strings sound bright",  # longer than MAX_LENGTH
    "unknownword a",
]


# --- tests ------------------------------------------------------------------------------


def test_encode_matches_numpy_pooling_in_input_order(artifact: Path) -> None:
    enc = load_encoder(artifact, device="cpu", batch_size=2, cache_size=0)
    vectors = enc.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), DIM)
    np.testing.assert_allclose(vectors, expected(TEXTS), atol=1e-5)
    # Batching and length sorting change nothing per text.
    singles = np.vstack([enc.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(vectors, singles, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_graph_without_token_type_ids(tmp_path: Path) -> None:
    enc = load_encoder(build_artifact(tmp_path / "two", with_token_types=False), device="cpu")
    np.testing.assert_allclose(enc.encode(TEXTS), expected(TEXTS), atol=1e-5)


def test_truncates_to_max_length(artifact: Path) -> None:
    enc = load_encoder(artifact, device="cpu", cache_size=0)
    long = " ".join(["a", "b"] * 50)
    cut = " ".join((["a", "b"] * 50)[: MAX_LENGTH - 2])
    np.testing.assert_allclose(enc.encode([long]), enc.encode([cut]), atol=1e-6)


def test_mean_pool_normalize_ignores_padding() -> None:
    hidden = np.array([[[1.0, 0.0], [3.0, 4.0], [99.0, 99.0]], [[0.0, 2.0], [50.0, 50.0], [50.0, 50.0]]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    out = mean_pool_normalize(hidden, mask)
    np.testing.assert_allclose(out, [[2 / np.sqrt(8), 2 / np.sqrt(8)], [0.0, 1.0]], atol=1e-7)
    assert cosine_rows(out, out * 3).min() == pytest.approx(1.0)


def test_cpu_provider_is_logged_once(artifact: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="persona.encoders"):
        enc = load_encoder(artifact, device="cpu", threads=1)
        enc.encode(TEXTS)
        enc.encode(TEXTS)
    records = [r for r in caplog.records if r.name == "persona.encoders"]
    assert len(records) == 1 and "CPUExecutionProvider" in records[0].getMessage()
    assert enc.provider == "CPUExecutionProvider" == enc.session.get_providers()[0]
    assert isinstance(enc.info, EncoderInfo) and enc.info.provider == enc.provider and enc.info.dim == DIM
    assert enc.info.sha256 == sha256_file(artifact / "model.onnx")


def _fake_cuda_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu without CUDA libraries: CUDA is *listed*, sessions quietly run on CPU."""
    real = ort.InferenceSession

    def session(path: str, sess_options: Any = None, providers: list[str] | None = None) -> Any:
        return real(path, sess_options=sess_options, providers=[p for p in providers or [] if p != runtime.CUDA])

    monkeypatch.setattr(ort, "get_available_providers", lambda: [runtime.CUDA, runtime.CPU])
    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(runtime, "_cuda_failed", False)
    monkeypatch.setattr(runtime, "cuda_possible", lambda: True)  # a GPU is there, its libraries are not


def test_silent_cuda_fallback_is_detected(
    artifact: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _fake_cuda_fallback(monkeypatch)
    with caplog.at_level(logging.INFO, logger="persona.encoders"):
        enc = load_encoder(artifact, device="auto")
        assert enc.provider == runtime.CPU
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "could not start" in warnings[0].getMessage()
        # A hot swap in the same process goes straight to CPU: no second round of load errors.
        assert load_encoder(artifact, device="auto").provider == runtime.CPU
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    with pytest.raises(ModelError, match="fell back to CPU"):
        load_encoder(artifact, device="cuda")


def test_int8_stays_on_cpu_under_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _fake_cuda_fallback(monkeypatch)
    artifact = build_artifact(tmp_path / "q", variant="int8", version="tiny-int8-1")
    with caplog.at_level(logging.INFO, logger="persona.encoders"):
        assert load_encoder(artifact, device="auto").provider == runtime.CPU
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # CUDA was never tried
    assert runtime._cuda_failed is False


def test_cache_hits_and_lru_bound(artifact: Path) -> None:
    enc = load_encoder(artifact, device="cpu", cache_size=3)
    first = enc.encode(["a", "b", "a"])
    info = enc.cache_info()
    assert (info.hits, info.misses, info.size) == (0, 3, 2)
    again = enc.encode(["a", "b"])
    np.testing.assert_array_equal(first[:2], again)
    assert enc.cache_info().hits == 2
    enc.encode(["c", "d"])  # evicts the least recently used ("a")
    assert enc.cache_info().size == 3
    enc.encode(["a"])
    assert enc.cache_info().misses == 6
    assert enc.encode([]).shape == (0, DIM)


@pytest.mark.parametrize("name", HASHED_FILES)
def test_tampered_file_is_refused(artifact: Path, name: str) -> None:
    path = artifact / name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=f"{name} sha256"):
        load_encoder(artifact, device="cpu")


@pytest.mark.parametrize("name", [*HASHED_FILES, "manifest.json"])
def test_missing_file_is_refused(artifact: Path, name: str) -> None:
    (artifact / name).unlink()
    with pytest.raises(ModelError, match="missing"):
        load_encoder(artifact, device="cpu")


def test_golden_check(artifact: Path) -> None:
    assert load_encoder(artifact, device="cpu").golden_check() >= 0.999
    golden = np.load(artifact / "golden.npy")
    golden[3] = golden[4]  # a different sentence's vector: cosine far below 0.999
    np.save(artifact / "golden.npy", golden)
    write_manifest(artifact)  # consistent hashes, so only the golden check can catch it
    with pytest.raises(ModelError, match="golden check"):
        load_encoder(artifact, device="cpu").golden_check()


def test_sentiment_head(artifact: Path) -> None:
    enc = load_encoder(artifact, device="cpu")
    vectors = enc.encode(TEXTS)
    w = np.linspace(-1, 1, DIM)
    want = np.clip((vectors.astype(np.float64) @ w + 3.5 - 3) / 2, -1, 1)
    np.testing.assert_allclose(enc.sentiment(vectors), want, atol=1e-6)
    assert enc.sentiment(100.0 * w[None, :]).tolist() == [1.0]
    assert enc.sentiment(-100.0 * w[None, :]).tolist() == [-1.0]


def test_registry_publish_and_current(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    assert reg.current() is None and reg.versions() == []
    build_artifact(tmp_path / "reg" / "v1", version="v1")
    build_artifact(tmp_path / "reg" / "v2", version="v2")
    (tmp_path / "reg" / ".staging-x").mkdir()  # an export in progress is not a version
    assert reg.versions() == ["v1", "v2"]
    reg.publish("v1")
    assert reg.current() == tmp_path / "reg" / "v1"
    reg.publish("v2")
    assert reg.current_name() == "v2"
    # No temporary file left behind; every publish recorded, in order.
    assert sorted(p.name for p in (tmp_path / "reg").iterdir()) == [".staging-x", "CURRENT", "HISTORY", "v1", "v2"]
    assert [(a, v) for _, a, v in reg.history()] == [("publish", "v1"), ("publish", "v2")]
    for bad in ("v3", ".staging-x", "../v1"):
        with pytest.raises(ModelError):
            reg.publish(bad)
    assert reg.current_name() == "v2"
    (tmp_path / "reg" / "CURRENT").write_text("gone\n")
    with pytest.raises(ModelError, match="gone"):
        reg.current()


def test_public_names() -> None:
    import encoders

    assert set(encoders.__all__) == {"Encoder", "EncoderInfo", "Registry", "load_encoder"}
    load: Callable[..., Encoder] = load_encoder
    assert callable(load)


def test_protobuf_writer_matches_onnx_when_available() -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(onnx_embedding_model(_table(), True))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]


def _with_gpu_graph(root: Path) -> Path:
    """The tiny artifact plus a distinguishable "fp16" graph (a negated table)."""
    build_artifact(root)
    (root / GPU_MODEL_FILE).write_bytes(onnx_embedding_model(-_table(), True))
    manifest = msgspec.json.decode((root / "manifest.json").read_bytes(), type=Manifest)
    sha = dict(manifest.sha256, **{GPU_MODEL_FILE: sha256_file(root / GPU_MODEL_FILE)})
    manifest = msgspec.structs.replace(manifest, sha256=sha, gpu_model=GPU_MODEL_FILE)
    (root / "manifest.json").write_bytes(msgspec.json.encode(manifest))
    return root


def _fake_working_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A session that reports CUDA as its provider (it computes on CPU underneath)."""
    real = ort.InferenceSession

    class Session:
        def __init__(self, path: str, sess_options: Any = None, providers: list[str] | None = None) -> None:
            self._inner = real(path, sess_options=sess_options, providers=[runtime.CPU])
            self._providers = list(providers or [runtime.CPU])

        def get_providers(self) -> list[str]:
            return self._providers

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [runtime.CUDA, runtime.CPU])
    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr(runtime, "_cuda_failed", False)
    monkeypatch.setattr(runtime, "cuda_possible", lambda: True)


def test_fp16_graph_runs_only_on_cuda_and_only_when_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _with_gpu_graph(tmp_path / "g")
    texts = ["great", "the pedal broke"]
    on_cpu = load_encoder(root, device="cpu")
    assert on_cpu.info.graph == "model.onnx"
    np.testing.assert_allclose(on_cpu.encode(texts), expected(texts), atol=1e-6)
    _fake_working_cuda(monkeypatch)
    on_gpu = load_encoder(root, device="auto")
    assert (on_gpu.provider, on_gpu.info.graph) == (runtime.CUDA, GPU_MODEL_FILE)
    assert on_gpu.info.sha256 == sha256_file(root / GPU_MODEL_FILE)
    np.testing.assert_allclose(on_gpu.encode(texts), -expected(texts), atol=1e-6)  # the other graph ran
    not_allowed = load_encoder(root, device="auto", fp16=False)
    assert (not_allowed.provider, not_allowed.info.graph) == (runtime.CUDA, "model.onnx")


def test_fp16_graph_never_runs_on_a_silent_cpu_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _with_gpu_graph(tmp_path / "g")
    _fake_cuda_fallback(monkeypatch)
    enc = load_encoder(root, device="auto")
    assert (enc.provider, enc.info.graph) == (runtime.CPU, "model.onnx")
    np.testing.assert_allclose(enc.encode(["great"]), expected(["great"]), atol=1e-6)


def test_pick_graph_table() -> None:
    m = msgspec.structs.replace(_manifest_stub(), gpu_model=GPU_MODEL_FILE)
    assert runtime.pick_graph(m, "auto", True, True) == GPU_MODEL_FILE
    assert runtime.pick_graph(m, "cuda", True, True) == GPU_MODEL_FILE
    assert runtime.pick_graph(m, "cpu", True, True) == "model.onnx"
    assert runtime.pick_graph(m, "auto", False, True) == "model.onnx"
    assert runtime.pick_graph(m, "auto", True, False) == "model.onnx"
    assert runtime.pick_graph(msgspec.structs.replace(m, gpu_model=""), "auto", True, True) == "model.onnx"


def _manifest_stub() -> Manifest:
    return Manifest(
        version="v", variant="fp32", sha256={}, opset=17, dim=DIM, max_length=MAX_LENGTH, pooling="mean",
        normalize=True, source="tests", parity=Parity(n=0, min_cos=None, mean_cos=None, checked=False),
        created_at="", inputs=["input_ids", "attention_mask"], pad_id=PAD, golden_sentences=[],
    )


def test_tampered_gpu_graph_is_refused(tmp_path: Path) -> None:
    root = _with_gpu_graph(tmp_path / "g")
    data = bytearray((root / GPU_MODEL_FILE).read_bytes())
    data[-1] ^= 0x01
    (root / GPU_MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match=f"{GPU_MODEL_FILE} sha256"):
        load_encoder(root, device="cpu")


def test_softmax_head_predicts_expected_stars() -> None:
    w = np.arange(DIM * 5, dtype=np.float64).reshape(DIM, 5) / 100.0
    bias = np.array([0.5, -0.2, 0.0, 0.1, 0.3])
    head = Head(w=list(w.reshape(-1)), b=0.0, mean_rating=4.0, train_n=10, kind="softmax",
                classes=[1.0, 2.0, 3.0, 4.0, 5.0], bias=list(bias))
    x = np.random.default_rng(0).normal(size=(4, DIM))
    logits = x @ w + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(head.predict_stars(x), p @ np.arange(1.0, 6.0), rtol=1e-12)


def test_exported_head_recovers_a_planted_star_direction() -> None:
    from export.head import fit, spearman

    rng = np.random.default_rng(1)
    stars = rng.integers(1, 6, size=600).astype(np.float64)
    direction = rng.normal(size=DIM)
    direction /= np.linalg.norm(direction)
    x = rng.normal(size=(600, DIM)) * 0.05 + np.outer((stars - 3) * 0.05, direction)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    head = fit(x[:400], stars[:400])
    assert head.kind == "softmax" and len(head.w) == DIM * 5 and len(head.bias) == 5
    pred = head.predict_stars(x[400:])
    assert pred.min() >= 1.0 and pred.max() <= 5.0
    assert spearman(pred, stars[400:]) > 0.8
    # Deterministic: a second fit gives the same weights bit for bit.
    assert fit(x[:400], stars[:400]).w == head.w


# --- CPU machines: CUDA is not even tried where no GPU can be (issue 8) ------------------


def _recording_session(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """onnxruntime-gpu on a machine without a GPU: CUDA is listed; every session's requested
    providers are recorded (a CUDA request would fail to start and fall back to CPU)."""
    real = ort.InferenceSession
    calls: list[list[str]] = []

    def session(path: str, sess_options: Any = None, providers: list[str] | None = None) -> Any:
        calls.append(list(providers or []))
        return real(path, sess_options=sess_options, providers=[p for p in providers or [] if p != runtime.CUDA])

    monkeypatch.setattr(ort, "get_available_providers", lambda: [runtime.CUDA, runtime.CPU])
    monkeypatch.setattr(ort, "InferenceSession", session)
    monkeypatch.setattr(runtime, "_cuda_failed", False)
    return calls


def test_no_gpu_auto_goes_straight_to_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = _with_gpu_graph(tmp_path / "g")
    calls = _recording_session(monkeypatch)
    monkeypatch.setattr(runtime, "cuda_possible", lambda: False)
    with caplog.at_level(logging.INFO, logger="persona.encoders"):
        enc = load_encoder(root, device="auto")
    assert (enc.provider, enc.info.graph) == (runtime.CPU, "model.onnx")  # not the fp16 graph
    assert calls == [[runtime.CPU]]  # one session, CUDA never requested
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.name == "persona.encoders"]
    assert len(infos) == 1 and runtime.CPU in infos[0]  # the effective provider, logged once
    assert runtime._cuda_failed is False
    np.testing.assert_allclose(enc.encode(["great"]), expected(["great"]), atol=1e-6)


def test_gpu_probe_true_tries_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _with_gpu_graph(tmp_path / "g")
    calls = _recording_session(monkeypatch)
    monkeypatch.setattr(runtime, "cuda_possible", lambda: True)
    enc = load_encoder(root, device="auto")
    assert calls[0] == [runtime.CUDA, runtime.CPU]
    assert enc.provider == runtime.CPU and runtime._cuda_failed is True  # the fake fell back


def test_forced_cuda_ignores_the_probe_and_fails_loudly(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _recording_session(monkeypatch)
    monkeypatch.setattr(runtime, "cuda_possible", lambda: False)
    with pytest.raises(ModelError, match="fell back to CPU"):
        load_encoder(artifact, device="cuda")
    assert calls and calls[0][0] == runtime.CUDA


@pytest.mark.parametrize(
    ("visible", "nodes", "libcuda", "want"),
    [
        (None, set(), False, False),
        (None, {"/dev/nvidia0"}, False, True),
        (None, {"/proc/driver/nvidia/version"}, False, True),
        (None, set(), True, True),  # WSL2 / Jetson: only the driver library
        ("", {"/dev/nvidia0"}, True, False),
        ("-1", {"/dev/nvidia0"}, True, False),
        ("0", {"/dev/nvidia0"}, False, True),
    ],
)
def test_cuda_possible_probe(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, nodes: set[str], libcuda: bool, want: bool
) -> None:
    import ctypes
    import os

    loaded: list[str] = []

    def cdll(name: str) -> object:
        loaded.append(name)
        if not libcuda:
            raise OSError(f"{name}: cannot open shared object file")
        return object()

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(os.path, "exists", lambda p: p in nodes)
    monkeypatch.setattr(ctypes, "CDLL", cdll)
    runtime.cuda_possible.cache_clear()
    try:
        assert runtime.cuda_possible() is want
        assert runtime.cuda_possible() is want
        assert len(loaded) <= 1  # cached: probed once per process
        assert all(name == "libcuda.so.1" for name in loaded)  # the driver, never cuBLAS
    finally:
        runtime.cuda_possible.cache_clear()


def test_registry_manifests_and_latest_per_variant(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    reg = Registry(root)
    assert reg.manifests() == [] and reg.latest("fp32") is None  # no registry folder yet

    def version(name: str, variant: Variant, created_at: str) -> None:
        (root / name).mkdir(parents=True)
        m = msgspec.structs.replace(_manifest_stub(), version=name, variant=variant, created_at=created_at)
        (root / name / "manifest.json").write_bytes(msgspec.json.encode(m))

    # Names sort one way, creation times the other: latest() goes by the manifest.
    version("a-fp32", "fp32", "2026-03-01T00:00:00+00:00")
    version("b-fp32", "fp32", "2026-01-01T00:00:00+00:00")
    version("c-int8", "int8", "2026-02-01T00:00:00+00:00")
    (root / ".staging-d").mkdir()  # an export in progress is not a version
    (root / "e-partial").mkdir()  # nor a directory without a manifest
    reg.publish("b-fp32")  # published or not makes no difference

    assert [(p.name, m.variant) for p, m in reg.manifests()] == [("a-fp32", "fp32"), ("b-fp32", "fp32"), ("c-int8", "int8")]
    assert all(p == root / m.version for p, m in reg.manifests())
    assert reg.latest("fp32") == root / "a-fp32"
    assert reg.latest("int8") == root / "c-int8"
    assert reg.latest("fp16") is None
    (root / "c-int8" / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="bad manifest.json"):
        reg.latest("fp32")


def test_cut_batches_by_rows_and_by_token_budget() -> None:
    """Batches of length-sorted rows: at most ``size`` rows and, with a budget, at most
    ``max_tokens`` padded tokens (rows x the batch's longest); an over-long row alone."""
    from encoders.runtime import cut_batches

    lengths = np.array([64, 8, 8, 300, 16, 8, 64, 16], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    by_rows = cut_batches(order, lengths, 3, None)
    assert [b.tolist() for b in by_rows] == [[1, 2, 5], [4, 7, 0], [6, 3]]
    budget = 128
    cut = cut_batches(order, lengths, 100, budget)
    assert sorted(i for b in cut for i in b.tolist()) == list(range(8))  # every row once
    for b in cut:
        width = int(lengths[b].max())
        assert len(b) == 1 or len(b) * width <= budget
    # the greedy cut, worked by hand: 8,8,8,16,16 (5x16=80); 64,64 (128); 300 alone
    assert [lengths[b].tolist() for b in cut] == [[8, 8, 8, 16, 16], [64, 64], [300]]
    # size 2: [8,8], [8,16], [16,64] (2x64 = 128 fits), [64], [300]
    assert [len(b) for b in cut_batches(order, lengths, 2, budget)] == [2, 2, 2, 1, 1]


def test_cpu_encoders_cut_by_the_default_token_budget(artifact: Path) -> None:
    """Unset: CPU_BATCH_TOKENS on CPU, rows only on CUDA; 0: rows only; a number: itself."""
    assert load_encoder(artifact, device="cpu").max_batch_tokens == runtime.CPU_BATCH_TOKENS
    assert load_encoder(artifact, device="cpu", max_batch_tokens=0).max_batch_tokens is None
    assert load_encoder(artifact, device="cpu", max_batch_tokens=300).max_batch_tokens == 300
    assert runtime.batch_tokens_for(None, runtime.CUDA) is None
    assert runtime.batch_tokens_for(4096, runtime.CUDA) == 4096
    with pytest.raises(ValueError, match=">= 0"):
        runtime.batch_tokens_for(-1, runtime.CPU)


def test_token_budget_bounds_every_call_and_changes_no_vector(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each inference call holds at most the budget's padded tokens (or one row), and the
    vectors are those of the rows-only cut, in input order."""
    texts = [" ".join(["a", "b", "great"] * (i % 4 + 1)) for i in range(12)] + TEXTS
    budget = 24
    enc = load_encoder(artifact, device="cpu", batch_size=64, cache_size=0, max_batch_tokens=budget)
    calls: list[tuple[int, int]] = []
    real = enc.run

    def spy(batch: Any) -> Any:
        ids = batch.feeds["input_ids"]
        calls.append((ids.shape[0], ids.shape[1]))
        return real(batch)

    monkeypatch.setattr(enc, "run", spy)
    vectors = enc.encode(texts)
    assert len(calls) > 1 and sum(rows for rows, _ in calls) == len(texts)
    assert all(rows == 1 or rows * width <= budget for rows, width in calls), calls
    rows_only = load_encoder(artifact, device="cpu", batch_size=64, cache_size=0, max_batch_tokens=0)
    np.testing.assert_allclose(vectors, rows_only.encode(texts), atol=1e-6)
    np.testing.assert_allclose(vectors, expected(texts), atol=1e-5)


def test_golden_sentences_are_encoded_in_one_call_whatever_the_batch_settings(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = load_encoder(artifact, device="cpu", batch_size=1, max_batch_tokens=1, cache_size=0)
    calls: list[int] = []
    real = enc.run

    def spy(batch: Any) -> Any:
        calls.append(len(batch.rows))
        return real(batch)

    monkeypatch.setattr(enc, "run", spy)
    assert enc.golden_check() >= runtime.GOLDEN_MIN_COS
    assert calls == [len(GOLDEN_SENTENCES)]
    calls.clear()
    enc.encode(["a b", "c d e"])
    assert calls == [1, 1]  # everything else follows the settings


def test_regression_int8_golden_check_refused_a_sound_artifact_at_review_batch_1(
    encoder_registry: tuple[Path, list[str]],
) -> None:
    """PERSONA_REVIEW_BATCH=1 (or a small token budget) made the worker refuse a sound int8
    artifact: its golden check re-encoded the golden sentences one per call, and int8
    quantizes activations per call, so they came out at cosine 0.988 against the export's
    vectors (encoded in one call), under the check's 0.999."""
    registry, names = encoder_registry
    int8 = registry / names[1]
    for batch_size, budget in ((1, None), (64, 16), (64, None), (64, 0)):
        enc = load_encoder(int8, device="cpu", batch_size=batch_size, max_batch_tokens=budget, cache_size=0)
        assert enc.golden_check() >= runtime.GOLDEN_MIN_COS, (batch_size, budget)


def test_the_worker_encoder_blocks_instead_of_spinning_and_encodes_the_same(artifact: Path) -> None:
    spinning = load_encoder(artifact, device="cpu", threads=2, cache_size=0)
    blocking = load_encoder(artifact, device="cpu", threads=2, cache_size=0, spin=False)
    key = "session.intra_op.allow_spinning"
    assert blocking.session.get_session_options().get_session_config_entry(key) == "0"
    # Unset is onnxruntime's default, which spins.
    with pytest.raises(RuntimeError, match="does not have configuration"):
        spinning.session.get_session_options().get_session_config_entry(key)
    np.testing.assert_array_equal(blocking.encode(TEXTS), spinning.encode(TEXTS))
    assert Settings().model_spin is False  # the worker's default (stream_app.worker builds its EncoderHolder with it)
