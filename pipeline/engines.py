"""How batch jobs run: `local` (threads in this process) or `ray` (Ray Data actors).

`redact` and `predict` (pre-annotating a pool of 100,000 images is the same job) choose their
engine here. With `ray`, each actor builds its detector once from a picklable recipe
(`SpecFactory`: a spec and options, never a pickled model), takes small batches of rows (paths,
not pixels) and returns small rows (results as JSON); the driver never holds pixels and does
the catalog writes itself (one SQLite writer). `init_ray` joins the cluster `RAY_ADDRESS`
names, or starts a local instance of its own with usage stats off. Ray is an optional extra
(`pip install '.[ray]'`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
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
    """Connect to RAY_ADDRESS if set, else start a small local instance of our own (no
    dashboard, no usage stats, on the loopback address). Without `address="local"` Ray joins any
    cluster a `ray start` left on this machine, with that cluster's settings (usage stats
    included). ValueError (one line naming RAY_ADDRESS) when the cluster cannot be reached."""
    import ray

    from pipeline.io import one_line

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "").strip()
    # Ray's driver replaces the SIGTERM handler with one that exits 15 at once, with no summary
    # and no `failed` stage row; textloop's own (SIGTERM ends a command as Ctrl-C does) goes back
    main_thread = threading.current_thread() is threading.main_thread()
    on_term = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # Ray turns its token authentication on for our own instance, and said so on every run
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, _node_ip_address="127.0.0.1")
    except (ConnectionError, TimeoutError, RuntimeError, ValueError, ImportError) as exc:
        first = one_line(exc)[:300]
        where = f"RAY_ADDRESS={address}" if address else "a local Ray instance"
        raise ValueError(f"cannot start Ray on {where}: {type(exc).__name__}: {first}") from None
    if main_thread and on_term is not None:
        signal.signal(signal.SIGTERM, on_term)


def stop_ray() -> None:
    """Stop this process's Ray work now (an interrupted command): actors finish no more
    images behind the summary's back ("interrupted after 4" with 7 written)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def call_threads(workers: int) -> int:
    """Threads per detector call when `workers` calls (threads of one process, or Ray actors on
    this machine) run at once: the cores shared out (2 cores, 2 workers: one each; one alone
    gets every core). Two actors of two threads each on two cores ran slower than one."""
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, min(int(workers), cores)))


class SpecFactory:
    """Picklable recipe for a detector, built inside each actor: `load_detector(spec, **options)`.

    The driver resolves the spec first (`current` -> the promoted bundle's absolute path, see
    `SpecFactory.of`): an actor never opens the workspace. Opening it there created an empty
    workspace (and a SQLite catalog on a shared filesystem) on a node that lacked it and quietly
    ran stock ppocr, whose boxes the driver then stored under the tuned model's version. The
    actor's detector must have the driver's version, else it stops. `info` (the model's
    validation numbers from the registry) is what the driver's detector reports. `cpus`: what
    an actor reserves from Ray, the threads its detector runs (`threads`, every detector kind
    takes it), so actors never oversubscribe a node's cores."""

    def __init__(self, spec: str, options: dict[str, Any] | None = None, info: dict[str, Any] | None = None,
                 version: str | None = None) -> None:
        if spec == "current":
            raise ValueError("SpecFactory needs a resolved spec (ppocr or a bundle path), not 'current'")
        self.spec, self.options, self.info, self.version = spec, dict(options or {}), dict(info or {}), version

    @classmethod
    def of(cls, spec: str, detector: Any, options: dict[str, Any] | None = None, ws: Any = None,
           workers: int = 1) -> "SpecFactory":
        """The recipe for `detector`, loaded on the driver from `spec` (resolved in `ws`), for
        `workers` actors: each gets `call_threads(workers)` threads unless `options` name them."""
        from pipeline.bundle import resolve_detector

        spec = resolve_detector(spec, ws)
        if spec != "ppocr":
            spec = os.path.abspath(spec)   # an actor's working directory is not the driver's
        options = {"threads": call_threads(workers), **(options or {})}
        return cls(spec, options, getattr(detector, "info", None), str(detector.version))

    @property
    def cpus(self) -> float:
        return float(self.options.get("threads") or 1)

    def __call__(self) -> Any:
        from pipeline.detectors import load_detector

        det = load_detector(self.spec, **self.options)
        if self.version is not None and str(det.version) != self.version:
            raise RuntimeError(f"a Ray actor loaded {self.spec} as {det.version}, not the driver's {self.version}")
        if self.info and getattr(det, "info", None) is not None:
            det.info = {**det.info, **self.info}
        return det


def map_actors(actor: type, actor_kwargs: dict[str, Any], rows: Sequence[dict[str, Any]], workers: int = 2,
               batch_size: int = 4, cpus_per_actor: float | None = None) -> Iterator[dict[str, Any]]:
    """Stream `actor(**actor_kwargs)(batch)` over `rows` on `workers` Ray actors; yields the
    output rows as Ray delivers them (order not guaranteed). An actor's `__call__` takes a
    numpy batch (dict of column arrays) and returns a dict of equal-length columns. Each actor
    reserves `cpus_per_actor` CPUs (default: its `factory`'s `cpus`, else 1)."""
    if cpus_per_actor is None:
        cpus_per_actor = float(getattr(actor_kwargs.get("factory"), "cpus", 1.0))
    if not rows:
        return iter(())
    import ray.data

    init_ray()
    # never more than the largest node holds (the driver's cores may exceed a worker node's):
    # an actor asking for more would wait forever
    import ray

    node_cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    cpus_per_actor = max(0.5, min(cpus_per_actor, max(node_cpus, default=1.0) or 1.0))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items(list(rows), override_num_blocks=max(1, min(len(rows), 64)))
    import logging

    if not logging.getLogger("textloop").isEnabledFor(logging.INFO):   # -v shows Ray Data's plan and timings
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    # `concurrency=` is deprecated (Ray 2.51); more actors than rows only draws a warning
    pool = ray.data.ActorPoolStrategy(size=max(1, min(int(workers), len(rows))))
    out = ds.map_batches(actor, fn_constructor_kwargs=actor_kwargs, batch_size=batch_size, compute=pool,
                         num_cpus=cpus_per_actor, batch_format="numpy")
    return iter(out.iter_rows())


def run_items(local: Callable[[], Iterator[Any]], ray: Callable[[], Iterator[Any]], engine: str) -> Iterator[Any]:
    """The one switch both commands use: the local generator or the Ray one."""
    return ray() if check_engine(engine) == "ray" else local()
