"""How batch jobs run: `local` (threads in this process) or `ray` (Ray Data actors).

`redact` and `predict` (pre-annotating a pool of 100,000 images is the same job) choose their
engine here. With `ray`, each actor builds its detector once from a picklable recipe
(`SpecFactory`: a spec and options, never a pickled model), takes small batches of rows (paths,
not pixels) and returns small rows (results as JSON); the driver never holds pixels and does
the catalog writes itself (one SQLite writer). `init_ray` joins the cluster `RAY_ADDRESS`
names, or starts a local instance with usage stats off. Ray is an optional extra
(`pip install '.[ray]'`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

ENGINES = ("local", "ray")


def check_engine(name: str) -> str:
    """`name` if it is an engine, else ValueError naming the choices (and how to get Ray)."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {name!r}")
    if name == "ray" and not ray_available():
        raise ValueError("--engine ray needs Ray: pip install 'textloop[ray]' (or pip install 'ray[data]')")
    return name


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS if set, else start a small local instance (no dashboard, no usage stats)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)


class SpecFactory:
    """Picklable recipe for a detector, built inside each actor: the spec resolved in the
    workspace's model registry, then `load_detector(path, **options)` (redact gives DB detectors
    its passes as options: `redact.run.pass_options`)."""

    def __init__(self, spec: str, workspace: str | None = None, options: dict[str, Any] | None = None) -> None:
        self.spec, self.workspace, self.options = spec, workspace, dict(options or {})

    def __call__(self) -> Any:
        from pipeline.bundle import resolve_detector, with_workspace_info
        from pipeline.detectors import load_detector

        ws = None
        if self.workspace:
            from pipeline.workspace import Workspace

            ws = Workspace.open(self.workspace)
        return with_workspace_info(load_detector(resolve_detector(self.spec, ws), **self.options), ws)


def map_actors(actor: type, actor_kwargs: dict[str, Any], rows: Sequence[dict[str, Any]], workers: int = 2,
               batch_size: int = 4, cpus_per_actor: float = 1.0) -> Iterator[dict[str, Any]]:
    """Stream `actor(**actor_kwargs)(batch)` over `rows` on `workers` Ray actors; yields the
    output rows as Ray delivers them (order not guaranteed). An actor's `__call__` takes a
    numpy batch (dict of column arrays) and returns a dict of equal-length columns."""
    if not rows:
        return iter(())
    import ray.data

    init_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items(list(rows), override_num_blocks=max(1, min(len(rows), 64)))
    out = ds.map_batches(actor, fn_constructor_kwargs=actor_kwargs, batch_size=batch_size,
                         concurrency=max(1, int(workers)), num_cpus=cpus_per_actor, batch_format="numpy")
    return iter(out.iter_rows())


def run_items(local: Callable[[], Iterator[Any]], ray: Callable[[], Iterator[Any]], engine: str) -> Iterator[Any]:
    """The one switch both commands use: the local generator or the Ray one."""
    return ray() if check_engine(engine) == "ray" else local()
