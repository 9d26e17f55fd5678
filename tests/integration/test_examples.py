"""The tours of the README and the manual (examples/: the README's tour, docs/workflows.md,
docs/placement.md) run as written, against a real worker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bo_queue import AsyncBOQueue
from examples.async_producer import produce
from examples.flows import dependencies, workflow
from examples.placement import placement
from examples.tour import tour
from tests.conftest import Cluster, make_cluster


@pytest.fixture(scope="module")
def reports(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=0, concurrency=2)
    c.add_worker(concurrency=2, imports=("examples.reports",))
    yield c
    c.close()


def test_readme_tour(reports: Cluster) -> None:
    result = tour(reports.producer())
    assert result["state"] == "SUCCEEDED" and result["children"] == 5
    assert result["parts"] == [{"part": i, "rows": 100 * i} for i in range(5)]
    assert result["rows"] == sum(100 * i for i in range(20))
    assert result["cancelled"] is True and result["later"] == "CANCELLED"


def test_async_producer(reports: Cluster) -> None:
    async def run() -> dict[str, object]:
        async with AsyncBOQueue(redis_url=reports.redis_url,
                                namespace=reports.namespace) as aq:
            return await produce(aq)

    result = asyncio.run(run())
    assert result["parts"] == [{"part": i, "rows": 100 * i} for i in range(3)]
    assert result["rows"] == sum(100 * i for i in range(20))
    assert result["cancelled"] is True and result["later"] == "CANCELLED"


@pytest.fixture(scope="module")
def etl(redis_url: str) -> Iterator[Cluster]:
    c = make_cluster(redis_url, workers=0, concurrency=2)
    c.add_worker(concurrency=2, imports=("examples.etl",))
    yield c
    c.close()


def test_readme_dependencies_and_workflow(etl: Cluster) -> None:
    bq = etl.producer()
    deps = dependencies(bq)
    assert deps["plan"] is True
    assert deps["stats"] == {"count": 10, "total": 45}
    assert deps["load"] == {"loaded": True, "inputs": 2}
    assert str(deps["dot"]).startswith("digraph") and "etl.load" in str(deps["dot"])
    flow = workflow(bq)
    assert flow == {"status": "SUCCEEDED", "stats": {"count": 10, "total": 45},
                    "polls": 3, "loaded": True}


def test_readme_placement(redis_url: str) -> None:
    c = make_cluster(redis_url, workers=0, concurrency=2)
    try:
        c.add_worker(concurrency=2, imports=("examples.placement",),
                     settings={"capabilities": "gpu", "offers": "cpu=4,gpu=1"})
        assert placement(c.producer()) == {
            "train": {"model": "resnet", "loss": 0.25}, "version": "2",
            "queue": "default.sim.train.v2", "quotes": [100.0 + n for n in range(6)],
            "fetched": len("https://example.org"),
        }
    finally:
        c.close()
