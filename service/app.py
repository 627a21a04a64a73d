"""The Ray Serve application: an HTTP ingress (``service/ingress.py``, its edge in
``service/edge.py``) that runs the models itself (``service/models.py``), an exact solver
(``service/exact.py``), and where ``surrogate_deployment`` says so a surrogate deployment
for the models (``service/surrogate.py``).

``build_app(settings)`` returns the application; ``app_builder(args)`` is the same for
``serve run`` / ``serve deploy`` config files.
"""

from typing import Any

from ray import serve

from service.exact import ExactSolver
from service.ingress import Ingress
from service.settings import ServiceSettings
from service.surrogate import Surrogate


def build_app(settings: ServiceSettings | None = None) -> serve.Application:
    """The whole application, bound with ``settings`` (defaults: ServiceSettings())."""
    s = settings or ServiceSettings()
    if s.require_api_keys and not s.api_keys:
        raise ValueError(
            "require_api_keys is set and no API key is configured: set PDESERVE_API_KEYS "
            "(comma-separated) where the application is built, or api_keys in its args"
        )
    common = {
        "logging_config": {"enable_access_log": s.access_log},
        "health_check_period_s": s.health_check_period_s,
        "max_ongoing_requests": s.max_ongoing_requests,
        "graceful_shutdown_timeout_s": s.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.5,
    }
    if s.max_replicas_per_node is not None:
        common["max_replicas_per_node"] = s.max_replicas_per_node
    surrogate = None
    ingress_cpus = s.ingress_cpus + s.surrogate_cpus  # the models run in the ingress
    if s.surrogate_deployment:
        surrogate = Surrogate.options(
            num_replicas=s.surrogate_replicas,
            ray_actor_options={"num_cpus": s.surrogate_cpus},
            **common,
        ).bind(s)
        ingress_cpus = s.ingress_cpus
    scaling = (
        {"num_replicas": s.exact_replicas}
        if s.exact_autoscaling is None
        else {"autoscaling_config": s.exact_autoscaling.model_dump()}
    )
    exact = ExactSolver.options(
        ray_actor_options={"num_cpus": s.exact_cpus}, **scaling, **common
    ).bind(s)
    return Ingress.options(
        num_replicas=s.ingress_replicas, ray_actor_options={"num_cpus": ingress_cpus}, **common
    ).bind(surrogate, exact, s)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For ``serve run service.app:app_builder key=value`` and ``serve deploy`` configs."""
    return build_app(ServiceSettings(**args))
