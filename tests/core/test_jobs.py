"""Job dependencies: the bookkeeping executors use to honour ``Job.after``."""

from __future__ import annotations

import pytest

from robench.jobs import Dependencies, Job, JobOutcome


def _job(key: str, *after: str) -> Job:
    return Job(key=key, task="attack" if after else "train", label=key, fn=dict, after=after)


def _ok(key: str) -> JobOutcome:
    return JobOutcome(key=key, ok=True, result={})


def test_a_job_waits_for_its_dependencies_in_the_call() -> None:
    deps = Dependencies([_job("a"), _job("a1", "a"), _job("b"), _job("b1", "b", "stored")])
    # "stored" is not among the jobs: it finished on an earlier invocation
    assert [j.key for j in deps.ready()] == ["a", "b"]
    assert deps.ready() == [] and deps
    assert deps.finished(_ok("b")) == []
    assert [j.key for j in deps.ready()] == ["b1"]
    deps.finished(_ok("a"))
    assert deps.next_ready().key == "a1"
    assert deps.next_ready() is None and not deps


def test_next_ready_follows_the_given_order() -> None:
    deps = Dependencies([_job("a"), _job("a1", "a"), _job("b"), _job("b1", "b")])
    order = []
    while (job := deps.next_ready()) is not None:
        order.append(job.key)
        deps.finished(_ok(job.key))
    assert order == ["a", "a1", "b", "b1"]  # a model is evaluated before the next trains


def test_a_failure_skips_everything_that_depends_on_it() -> None:
    deps = Dependencies([_job("a"), _job("a1", "a"), _job("a2", "a1"), _job("b"),
                         _job("b1", "b")])
    assert [j.key for j in deps.ready()] == ["a", "b"]
    skipped = deps.finished(JobOutcome(key="a", ok=False, result=None, error="boom"))
    assert {o.key for o in skipped} == {"a1", "a2"}
    assert all(o.skipped and not o.ok and "job a failed" in o.error for o in skipped)
    deps.finished(_ok("b"))
    assert [j.key for j in deps.ready()] == ["b1"] and not deps


def test_duplicate_keys_and_cycles_are_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="share the key 'a'"):
        Dependencies([_job("a"), _job("a")])
    with pytest.raises(ValueError, match="c1, c2 depend on each other"):
        Dependencies([_job("a"), _job("c1", "c2"), _job("c2", "c1")])
    assert Dependencies([_job("a", "a")]).next_ready().key == "a"  # itself: no dependency


def test_a_large_grid_runs_model_by_model() -> None:
    """10,000 jobs (1,000 models x 9 evaluations): every model is evaluated before the next
    one trains (the bookkeeping touches only a job's own dependents, so this is quick)."""
    jobs = []
    for m in range(1000):
        jobs += [_job(f"t{m}")] + [_job(f"e{m}.{i}", f"t{m}") for i in range(9)]
    deps = Dependencies(jobs)
    order = []
    while (job := deps.next_ready()) is not None:
        deps.finished(_ok(job.key))
        order.append(job.key)
    assert order == [job.key for job in jobs]


def test_job_kind_is_a_deprecated_alias_of_task() -> None:
    """Executors written against robench 0.1 read ``job.kind``: it still answers, warning."""
    job = _job("a")
    with pytest.warns(DeprecationWarning, match="Job.task"):
        assert job.kind == "train"
