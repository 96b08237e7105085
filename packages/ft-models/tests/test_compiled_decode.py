"""The compiled decode step (`ft_models.generation.compiled_decode`): its logits equal
transformers' forward pass step by step and across the cache's growth (in float32, to
rounding; in bfloat16, within a few roundings of the eager step), it builds in a background
thread while the eager step serves, a later decoder (a later process) loads what was built
instead of building again, and where it cannot build (no C++ compiler, a failing build)
decoding goes on eagerly and says why.

Each build for these tiny models takes about ten seconds on two cores, so the tests of this
file share one folder of built steps (as the processes of one user do) and build as few
variants as they can. Every build runs in a child process (`decode_build`)."""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import transformers

from ft_models.generation import compiled_decode
from ft_models.generation.static_decode import StaticDecoder
from ft_models.generation.torch_backend import TorchLM

SMALL = dict(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
)  # fmt: skip

pytestmark = pytest.mark.skipif(
    compiled_decode.compile_unavailable() is not None,
    reason=f"torch.compile cannot build CPU code here: {compiled_decode.compile_unavailable()}",
)


@pytest.fixture(autouse=True, scope="module")
def _shared_builds(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("compiled")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiled_decode, "package_folder", lambda: folder)
        yield folder


def _model(kind: str, dtype: Any = torch.float32, **extra: Any) -> Any:
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(kind, **{**SMALL, **extra})
    return transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()


def _reference(model: Any, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float().numpy()


def test_compiled_steps_equal_transformers_across_the_cache_growth() -> None:
    model = _model("llama")
    decoder = StaticDecoder(model, compile=True)
    assert decoder.compile_reason is None
    rng = np.random.default_rng(1)
    ids = [int(i) for i in rng.integers(0, 128, 250)]
    got = decoder.start(ids)
    for _ in range(10):  # past 256 positions: the cache doubles and the step compiles again
        ids.append(int(got.argmax()))
        got = decoder.step(ids[-1])
        np.testing.assert_allclose(got, _reference(model, ids), atol=2e-5, rtol=1e-5)
    assert decoder.compiled is not None and decoder.compiled.compiled == {256, 512}
    # A next turn read eagerly after the compiled steps sees what they wrote into the cache.
    more = [5, 6, 7]
    np.testing.assert_allclose(decoder.extend(more), _reference(model, ids + more), atol=2e-5)
    # A fork of the decoder shares the compile and has a cache of its own.
    other = decoder.fork()
    first = other.start(ids[:20])
    np.testing.assert_allclose(other.step(int(first.argmax())),
                               _reference(model, [*ids[:20], int(first.argmax())]), atol=2e-5)  # fmt: skip
    np.testing.assert_allclose(decoder.step(9), _reference(model, ids + more + [9]), atol=2e-5)


@pytest.mark.parametrize(
    ("kind", "extra"),
    [("qwen2", {}), ("qwen3", {"head_dim": 16})],
    ids=["qwen2-biases", "qwen3-qk-norms"],
)
def test_compiled_steps_of_biases_and_head_norms(kind: str, extra: dict) -> None:
    model = _model(kind, **extra)
    decoder = StaticDecoder(model, compile=True)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    got = decoder.start(ids)
    for _ in range(3):
        ids.append(int(got.argmax()))
        got = decoder.step(ids[-1])
        np.testing.assert_allclose(got, _reference(model, ids), atol=2e-5, rtol=1e-5)


def test_bfloat16_compiled_steps_stay_within_a_few_roundings_of_the_eager_step() -> None:
    model = _model("llama", dtype=torch.bfloat16)
    eager, compiled = StaticDecoder(model), StaticDecoder(model, compile=True)
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    a, b = eager.start(ids), compiled.start(ids)
    for token in (7, 8, 9):
        a, b = eager.step(token), compiled.step(token)
        scale = np.abs(a).max()
        assert np.abs(a - b).max() <= 4 * 2.0**-8 * scale  # a few bfloat16 roundings


def test_a_background_compile_lets_eager_steps_serve_meanwhile() -> None:
    model = _model("llama", intermediate_size=80)  # shapes of its own: a compile of its own
    lm = TorchLM(model, compile=True)
    lm.static().warm((256,))
    compiled = lm.static().compiled
    ids = [3, 1, 4, 1, 5]
    got = lm.start(ids)
    meanwhile = 0
    while compiled.busy:  # steps go on, eagerly, while the other thread compiles
        ids.append(int(got.argmax()) % 100)
        got = lm.step(ids[-1])
        np.testing.assert_allclose(got, _reference(model, ids), atol=2e-5, rtol=1e-5)
        meanwhile += 1
        if len(ids) > 200:
            ids = ids[:5]
            got = lm.start(ids)
    assert meanwhile > 0
    assert compiled.compiled == {256}
    ids.append(7)
    np.testing.assert_allclose(lm.step(7), _reference(model, ids), atol=2e-5, rtol=1e-5)
    assert lm.compile_reason is None
    # Past 256 positions the cache doubles: the compile for 512 starts in the background too,
    # and the steps go on eagerly until it is done; then they run compiled again.
    ids = [int(i) % 100 for i in range(250)]
    got = lm.start(ids)
    while len(ids) < 260:
        ids.append(int(got.argmax()))
        got = lm.step(ids[-1])
        np.testing.assert_allclose(got, _reference(model, ids), atol=2e-5, rtol=1e-5)
    for _ in range(6000):  # at most 5 minutes
        if not compiled.busy:
            break
        time.sleep(0.05)
    assert compiled.compiled == {256, 512}
    ids.append(8)
    np.testing.assert_allclose(lm.step(8), _reference(model, ids), atol=2e-5, rtol=1e-5)


def test_without_a_compiler_decoding_is_eager_and_says_why(monkeypatch: Any) -> None:
    monkeypatch.setattr(compiled_decode, "compile_unavailable", lambda: "no C++ compiler (test)")
    lm = TorchLM(_model("llama"), compile=True)
    ids = [3, 1, 4]
    got = lm.start(ids)
    np.testing.assert_allclose(lm.step(int(got.argmax())), _reference(lm.model, [*ids, int(got.argmax())]), atol=2e-5)  # fmt: skip
    assert lm.compile_reason == "no C++ compiler (test)"
    assert TorchLM(_model("llama")).compile_reason == "not asked for"


def test_a_compile_that_fails_falls_back_to_the_eager_step_with_a_warning(
    monkeypatch: Any,
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("inductor exploded (test)")

    monkeypatch.setattr(compiled_decode, "_build_package", broken)
    model = _model("llama", intermediate_size=72)  # not built by another test
    decoder = StaticDecoder(model, compile=True)
    ids = [3, 1, 4]
    got = decoder.start(ids)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = decoder.step(5)
    np.testing.assert_allclose(got, _reference(model, [*ids, 5]), atol=2e-5)
    assert decoder.compiled is None
    assert "inductor exploded (test)" in decoder.compile_reason
    assert any("decoding without the compiled step" in str(w.message) for w in caught)
    np.testing.assert_allclose(decoder.step(6), _reference(model, [*ids, 5, 6]), atol=2e-5)


def test_a_batch_left_with_one_row_steps_it_compiled() -> None:
    from ft_models.generation.static_batch import StaticBatch

    model = _model("llama")
    decoder = StaticDecoder(model, compile=True)
    batch = StaticBatch(decoder)
    rows = {"a": [3, 1, 4, 1, 5], "b": [9, 2, 6]}
    logits = {key: batch.add(key, ids) for key, ids in rows.items()}
    for _ in range(2):  # two rows: the eager batched step
        feed = {key: int(logits[key].argmax()) for key in rows}
        for key, token in feed.items():
            rows[key].append(token)
        logits = batch.step(feed)
        for key, ids in rows.items():
            np.testing.assert_allclose(logits[key], _reference(model, ids), atol=2e-5, rtol=1e-5)
    assert decoder.compiled.compiled == set()
    batch.remove("a")  # one row left: the compiled step, on the batch's own cache
    for _ in range(3):
        token = int(logits["b"].argmax())
        rows["b"].append(token)
        logits = batch.step({"b": token})
        np.testing.assert_allclose(logits["b"], _reference(model, rows["b"]), atol=2e-5, rtol=1e-5)
    assert decoder.compiled.compiled == {256}
    rows["c"] = [7, 7, 8]  # and a newcomer makes it a batch again, eager, nothing lost
    logits = {"b": logits["b"], "c": batch.add("c", rows["c"])}
    feed = {key: int(logits[key].argmax()) for key in ("b", "c")}
    for key, token in feed.items():
        rows[key].append(token)
    logits = batch.step(feed)
    for key in ("b", "c"):
        np.testing.assert_allclose(logits[key], _reference(model, rows[key]), atol=2e-5, rtol=1e-5)


def test_a_later_decoder_loads_the_built_step_instead_of_building(_shared_builds: Any) -> None:
    model = _model("llama")
    first = StaticDecoder(model, compile=True)
    first.start([3, 1, 4])
    first.step(1)  # built here, or by a test before: on disk either way
    built = sorted(_shared_builds.glob("*"))
    assert first.compiled.path(256) in built
    # A new process: another copy of the model, in the default mode of ft generate.
    later = StaticDecoder(_model("llama"), compile="cached")
    ids = [2, 7, 1, 8]
    got = later.start(ids)
    for _ in range(3):
        ids.append(int(got.argmax()))
        got = later.step(ids[-1])
        np.testing.assert_allclose(got, _reference(model, ids), atol=2e-5, rtol=1e-5)
    assert later.compiled.compiled == {256} and later.compiled.built == set()
    assert sorted(_shared_builds.glob("*")) == built  # nothing built again
    # Nothing built for this shape: "cached" decodes eagerly and builds nothing.
    other = StaticDecoder(_model("llama", intermediate_size=88), compile="cached")
    ids = [2, 7, 1, 8]
    got = other.start(ids)
    ids.append(int(got.argmax()))
    np.testing.assert_allclose(other.step(ids[-1]), _reference(other.model, ids), atol=2e-5)
    assert other.compiled.compiled == set() and not other.compiled.busy
    assert sorted(_shared_builds.glob("*")) == built


def test_the_package_name_tells_apart_what_the_build_depends_on() -> None:
    def name(model: Any, capacity: int = 256) -> str:
        return StaticDecoder(model, compile="cached").compiled.path(capacity).name

    base = name(_model("llama"))
    assert name(_model("llama")) == base  # another copy of the same shapes: the same build
    assert name(_model("llama"), 512) != base
    assert name(_model("llama", dtype=torch.bfloat16)) != base
    assert name(_model("llama", intermediate_size=80)) != base
    assert name(_model("llama", rms_norm_eps=1e-5)) != base  # a constant compiled in
    # One tensor passed twice (tied embeddings) is one input to the build: a model whose
    # output layer is its own weight needs a build of its own.
    assert name(_model("llama", tie_word_embeddings=True)) != base


def test_a_build_killed_midway_leaves_nothing_under_a_package_name(
    monkeypatch: Any, tmp_path: Any
) -> None:
    import os
    import subprocess
    import sys
    import threading

    from ft_models.generation import decode_build

    monkeypatch.setattr(compiled_decode, "package_folder", lambda: tmp_path)
    # What a process that left mid-build (or was killed) left behind, and another build's
    # file still being written.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    orphan = tmp_path / f".decode-256-0123.{gone}-0badf00d.partial.pt2"
    running = tmp_path / f".decode-256-0123.{os.getppid()}-0badf00d.partial.pt2"
    for file in (orphan, running):
        file.write_bytes(b"half a package")
    decoder = StaticDecoder(_model("llama"), compile=True)
    decoder.start([1, 2])
    failed: list[BaseException] = []

    def build() -> None:
        try:
            decoder.compiled.warm(256)
        except BaseException as error:
            failed.append(error)

    thread = threading.Thread(target=build)
    thread.start()
    for _ in range(6000):  # the child clears the orphan once traced, as it starts compiling
        if not orphan.exists():
            break
        time.sleep(0.05)
    assert not orphan.exists()
    decode_build.stop_children()  # as `ft chat` leaving mid-build, or a kill
    thread.join(timeout=60)
    assert [str(e).split(":")[0] for e in failed] == [
        "building the compiled step failed (signal 9)"
    ]
    assert not compiled_decode.compiling()
    # Nothing under a package's name; the other build's file is not touched.
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    assert running.exists()


def test_a_background_build_never_traces_in_the_process_that_decodes() -> None:
    """torch.export's state is process-wide (`torch.compiler.is_exporting()`, the fx metadata
    dictionary): a build traced in a thread made another thread's model load fail with
    `KeyError: 'custom'`. The build runs in a child, so this process never exports, and
    models load and decode while it builds."""
    lm = TorchLM(_model("llama", intermediate_size=112), compile=True)
    lm.static().warm((256,))
    exporting, loaded = 0, 0
    for _ in range(6000):  # at most 5 minutes
        step = lm.static().compiled
        if step is None or not step.busy:
            break
        exporting += torch.compiler.is_exporting()
        _model("llama", intermediate_size=104)  # its rotary tables: `1.0 / tensor`
        loaded += 1
        time.sleep(0.01)
    assert lm.compile_reason is None and lm.static().compiled.compiled == {256}
    assert exporting == 0 and loaded > 0


def test_the_child_gets_the_arguments_layout_as_json() -> None:
    """The build's child makes tensors of the parent's shapes, strides, dtypes and sharing."""
    import json

    from ft_models.generation import decode_build

    decoder = StaticDecoder(_model("llama", tie_word_embeddings=True), compile=True)
    step = decoder.compiled
    caches = [torch.zeros(4, 256, 16) for _ in step.layers]
    token, position = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    decoder.rotary_tables(256)
    arguments = step._arguments(token, position, caches, decoder.cos[:256], decoder.sin[:256])
    described = json.loads(json.dumps(decode_build.describe(arguments, step.sizes)))
    rebuilt, sizes = decode_build.arguments_of(described)
    assert sizes == step.sizes
    flat = compiled_decode._tensors(arguments)
    again = compiled_decode._tensors(rebuilt)
    assert [(t.shape, t.stride(), t.dtype) for t in again] == [
        (t.shape, t.stride(), t.dtype) for t in flat
    ]
    # the tied output layer is the embedding there too, and nothing else is shared
    assert rebuilt[2] is rebuilt[8][0] and arguments[2] is arguments[8][0]
    assert len({id(t) for t in again}) == len({id(t) for t in flat}) == len(flat) - 1
    # the other values (epsilons, sizes, absent biases) as they were
    assert rebuilt[3][0][1] == arguments[3][0][1] and rebuilt[3][0][3] is None


def test_a_position_outside_the_cache_is_an_error_not_an_abort() -> None:
    decoder = StaticDecoder(_model("llama"), compile=True)
    decoder.start([1, 2])
    decoder.step(3)
    caches = [c[0] for c in decoder.caches]
    with pytest.raises(IndexError, match="position 256 is outside a cache of 256"):
        decoder.compiled(4, 256, caches, decoder.cos, decoder.sin)


def test_two_models_building_in_the_background_at_once_both_end_compiled() -> None:
    # As ft serve with two models: two background builds, which must not trace at once.
    lms = [TorchLM(_model("llama", intermediate_size=size), compile=True) for size in (120, 128)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for lm in lms:
            lm.static().warm((256,))
        for _ in range(6000):  # at most 5 minutes
            if not any(
                lm.static().compiled is not None and lm.static().compiled.busy for lm in lms
            ):
                break
            time.sleep(0.05)
    assert [str(w.message) for w in caught if "compiled step" in str(w.message)] == []
    for lm in lms:
        assert lm.compile_reason is None and lm.static().compiled.compiled == {256}
        ids = [3, 1, 4]
        got = lm.start(ids)
        ids.append(int(got.argmax()))
        np.testing.assert_allclose(lm.step(ids[-1]), _reference(lm.model, ids), atol=2e-5)
        assert lm.decode_step == "compiled"


def test_build_readies_every_capacity_a_sequence_passes_through() -> None:
    decoder = StaticDecoder(_model("llama"), compile=True)
    heard: list[int] = []
    built = decoder.build(600, heard.append)  # 256, then 512, then 1,024 positions
    assert heard == built and set(built) <= {256, 512, 1024}
    assert all(decoder.compiled.path(c).is_file() for c in (256, 512, 1024))
    assert decoder.build(600, heard.append) == []  # all there: nothing built again
    assert StaticDecoder(_model("llama")).build(600) == []  # not compiled: nothing to build
