"""deploy/: the KubeRay manifests and the Dockerfile name the entry points the code has."""

import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _entry_point(import_path: str):
    module, _, name = import_path.partition(":")
    return getattr(importlib.import_module(module), name)


def _containers(cluster: dict) -> list[dict]:
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_rayservice_serves_the_serve_configs_application():
    from ray.serve.schema import ServeDeploySchema

    manifest = _load("k8s/rayservice.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    embedded = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    standalone = ServeDeploySchema.model_validate(_load("serve_config.yaml"))
    (app,), (ref,) = embedded.applications, standalone.applications
    assert app.import_path == ref.import_path == "service.app:app_builder"
    assert callable(_entry_point(app.import_path))
    assert (app.name, app.route_prefix) == (ref.name, ref.route_prefix)
    ServiceSettings(**app.args)  # the arguments are settings the code accepts
    ServiceSettings(**ref.args)
    # The same application, but for where the registry lives and how many replicas run.
    differ = {"registry", "surrogate_replicas"}
    assert {k: v for k, v in app.args.items() if k not in differ} == {
        k: v for k, v in ref.args.items() if k not in differ
    }
    # The registry the config names is the volume every pod mounts.
    cluster = manifest["spec"]["rayClusterConfig"]
    for container in _containers(cluster):
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert app.args["registry"] in mounts


def test_rayjob_runs_a_finetune_the_cli_accepts():
    from training.finetune import parse_args

    manifest = _load("k8s/rayjob-finetune.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "training.finetune"]
    config, out = parse_args(argv[3:])
    assert config.use_ray and config.publish and config.registry == "/registry"
    assert out.startswith("/registry/")
    cluster = manifest["spec"]["rayClusterSpec"]
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True
    for container in _containers(cluster):
        assert "/registry" in {m["mountPath"] for m in container["volumeMounts"]}


def test_manifests_use_the_image_the_dockerfile_documents():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (tag,) = set(re.findall(r"docker build -f deploy/Dockerfile -t (\S+) \.", dockerfile))
    for name, key in (("k8s/rayservice.yaml", "rayClusterConfig"),
                      ("k8s/rayjob-finetune.yaml", "rayClusterSpec")):  # fmt: skip
        cluster = _load(name)["spec"][key]
        assert cluster["rayVersion"] == "2.60.0"
        assert {c["image"] for c in _containers(cluster)} == {tag}


def test_dockerfile_copies_what_exists_and_runs_pdeserve_serve():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for line in re.findall(r"^COPY .*$", dockerfile, flags=re.M):
        for source in line.split()[2:-1]:
            assert (ROOT / source.rstrip("/")).exists(), line
    assert "rayproject/ray:2.60.0" in dockerfile
    # every package the project installs is in the image
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(
        r"^\[tool\.setuptools\.packages\.find\]\ninclude = \[(.*)\]", pyproject, re.M
    )
    for package in re.findall(r'"([^"]+)"', include.group(1)):
        name = package.rstrip("*")
        assert f"COPY --chown=ray:users {name}/ {name}/" in dockerfile, name
    cmd = re.search(r"^CMD \[(.*)\]$", dockerfile, flags=re.M).group(1)
    assert cmd.replace('"', "").split(", ")[:2] == ["pdeserve", "serve"]
    assert (DEPLOY / "README.md").exists()


def test_the_serve_config_is_safe_as_it_stands(monkeypatch):
    """Loopback proxies, API keys required (the application refuses to build without
    one), the exact deployment's replica bounds stated."""
    from service.app import app_builder

    config = _load("serve_config.yaml")
    assert config["http_options"]["host"] == "127.0.0.1"
    (app,) = config["applications"]
    assert app["args"]["require_api_keys"] is True
    bounds = app["args"]["exact_autoscaling"]
    assert 1 <= bounds["min_replicas"] < bounds["max_replicas"]
    monkeypatch.delenv("PDESERVE_API_KEYS", raising=False)
    with pytest.raises(ValueError, match="no API key is configured: set PDESERVE_API_KEYS"):
        app_builder(app["args"])
    monkeypatch.setenv("PDESERVE_API_KEYS", "k1,k2")
    assert app_builder(app["args"]) is not None
