"""The model registry: versions, resolution, checksums, atomic and concurrent publishing."""

import threading

import pytest

from modelstore.registry import (
    Architecture,
    ModelCard,
    Normalization,
    Registry,
    RegistryError,
    parse_ref,
)


def _card() -> ModelCard:
    return ModelCard(
        model=Architecture.model_validate({"class": "PDESurrogate", "args": {}, "n_parameters": 3}),
        normalization=Normalization(source_ref=1.0, coefficient_ref=[1.0] * 6, solution_ref=2.0),
        resolution=32,
    )


@pytest.fixture(params=["local", "memory"])
def registry(request, tmp_path):
    if request.param == "local":
        return Registry(tmp_path / "registry")
    return Registry(f"memory://registry-{tmp_path.name}")


def test_versions_latest_and_pins(registry):
    first = registry.publish("poisson", _card(), {"model.onnx": b"one"})
    second = registry.publish("poisson", _card(), lambda card: {"model.onnx": card.ref.encode()})
    assert (first.ref, second.ref) == ("poisson@1", "poisson@2")
    assert registry.names() == ["poisson"]
    assert registry.resolve("poisson") == registry.resolve("poisson@latest") == ("poisson", 2)
    card, files = registry.read_files("poisson@1")
    assert files == {"model.onnx": b"one"} and card.version == 1
    assert registry.read_files("poisson")[1] == {"model.onnx": b"poisson@2"}
    with pytest.raises(RegistryError, match="no version 7"):
        registry.resolve("poisson@7")
    with pytest.raises(RegistryError, match="no model 'heat'"):
        registry.resolve("heat")


def test_a_tampered_file_is_refused(tmp_path):
    registry = Registry(tmp_path)
    registry.publish("m", _card(), {"model.onnx": b"graph"})
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"graph, changed")
    with pytest.raises(RegistryError, match="does not match its checksum"):
        registry.read_files("m@1")


def test_a_publish_that_fails_midway_leaves_no_version(registry):
    def broken(card):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry.publish("m", _card(), broken)
    assert registry.versions("m") == []
    registry.publish("m", _card(), {"model.onnx": b"ok"})
    assert registry.versions("m") == [1]


def test_concurrent_publishes_get_distinct_versions(tmp_path):
    registry = Registry(tmp_path)
    refs, start = [], threading.Barrier(6)

    def publish(i):
        start.wait()
        refs.append(registry.publish("m", _card(), {"model.onnx": f"{i}".encode()}).ref)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(refs) == [f"m@{v}" for v in range(1, 7)]
    contents = {registry.read_files(r)[1]["model.onnx"] for r in refs}
    assert len(contents) == 6  # no version holds another publish's files


def test_names_and_refs_are_checked():
    assert parse_ref("fno@3") == ("fno", "3")
    with pytest.raises(RegistryError, match="invalid model name"):
        parse_ref("../etc")
    with pytest.raises(RegistryError, match="invalid version"):
        parse_ref("fno@new")


def test_a_publish_killed_midway_leaves_no_version(tmp_path):
    """SIGKILL after the files are written, before the rename: nothing is visible."""
    import signal
    import subprocess
    import sys
    import time

    code = f"""
import time
from pathlib import Path
from modelstore.registry import Registry
import tests_registry_card as t
def stall(self, staging, target):
    Path({str(tmp_path / "ready")!r}).write_text(staging)
    time.sleep(60)
Registry._claim = stall
Registry({str(tmp_path / "reg")!r}).publish("m", t.card(), {{"model.onnx": b"x" * 100000}})
"""
    helper = tmp_path / "tests_registry_card.py"
    helper.write_text(
        "from modelstore.registry import Architecture, ModelCard, Normalization\n"
        "def card():\n"
        "    return ModelCard(model=Architecture.model_validate("
        "{'class': 'X', 'args': {}, 'n_parameters': 1}), normalization=Normalization("
        "source_ref=1, coefficient_ref=[1] * 6, solution_ref=1), resolution=32)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path)
    deadline = time.time() + 60
    while not (tmp_path / "ready").exists():
        assert proc.poll() is None and time.time() < deadline, "publisher ended early"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    registry = Registry(tmp_path / "reg")
    assert registry.names() == ["m"] and registry.versions("m") == []
    with pytest.raises(RegistryError, match="no model 'm'"):
        registry.resolve("m")
    assert registry.publish("m", _card(), {"model.onnx": b"y"}).version == 1
