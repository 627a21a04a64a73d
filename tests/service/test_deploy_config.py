"""deploy/serve_config.yaml is a valid Serve config whose application builds and answers."""

from pathlib import Path

import httpx
import yaml
from service_helpers import API_KEY

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve_config.yaml"


def test_serve_config_deploys_the_application(embedded_app, registry_root):
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (app,) = config.applications
    assert app.import_path == "service.app:app_builder" and app.name == "pdeserve"
    module, _, name = app.import_path.partition(":")
    builder = getattr(__import__(module, fromlist=[name]), name)
    # The config's own arguments, pointed at the test registry and shrunk to fit beside
    # the running application on 2 CPUs.
    args = dict(app.args) | {
        "registry": str(registry_root),
        "api_keys": [API_KEY],
        "ingress_cpus": 0.05,
        "surrogate_cpus": 0.05,
        "exact_cpus": 0.05,
    }
    serve.run(builder(args), name="from-config", route_prefix="/from-config")
    try:
        headers = {"X-API-Key": API_KEY}
        r = httpx.post(
            # a second application: Serve's proxy routes to it by prefix
            f"{embedded_app.proxy_url}/from-config/solve",
            headers=headers,
            json={"pde": "helmholtz", "coefficients": {"omega": 3}, "source": [[0.0] * 32] * 32},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "default@1"
    finally:
        serve.delete("from-config")
