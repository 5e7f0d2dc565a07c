"""One shard of a sharded run, as a Prefect flow: what a worker of ``--work-pool`` runs.

``synthflow run RECIPE --shards N --work-pool POOL`` registers this flow as the deployment
``synthflow-shard/shard-POOL`` and starts one flow run of it per shard (``run_deployment``).
The work itself is :func:`synthflow.shard.run_shard` (no Prefect there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from synthflow.shard import run_shard


@flow(name="synthflow-shard", log_prints=True)
def shard_flow(job: dict[str, Any], shard: int) -> dict[str, Any]:
    """Take batches of the run in ``job`` from its Redis queue until the run has enough rows."""
    return run_shard(job, shard)


def register(work_pool: str) -> str:
    """Register (or update) the shard deployment on ``work_pool``; its workers run it from this
    checkout's path, so each host needs the repository at the same path."""
    from prefect.deployments.runner import RunnerDeployment

    root = Path(__file__).resolve().parent.parent
    name = f"shard-{work_pool}"
    # an absolute entrypoint and the checkout as the path: the worker's flow-run process loads
    # it from there, whatever the submitting process's working directory was
    dep = RunnerDeployment.from_entrypoint(f"{root / 'flows' / 'shard_flow.py'}:shard_flow", name=name)
    dep._path = str(root)
    dep.apply(work_pool_name=work_pool)
    return f"synthflow-shard/{name}"
