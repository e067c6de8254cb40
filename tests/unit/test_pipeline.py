"""The middleware pipeline's order: ``before`` forward, ``after`` in reverse, an error unwinding through
``on_error`` innermost first; handled, retried and stopped subjects. The middlewares here are the test's own
recorders: what is under test is plumbing.middleware.base.Pipeline, which is the real one."""

from dataclasses import dataclass, field

import pytest

from plumbing.middleware.base import HANDLED, RAISE, RETRY, Middleware, Pipeline, Verdict

pytestmark = pytest.mark.unit


@dataclass
class Subject:
    stopped: bool = False
    log: list[str] = field(default_factory=list)


class Boom(Exception):
    pass


class Recorder(Middleware[Subject]):
    def __init__(
        self,
        name: str,
        *,
        verdict: Verdict = RAISE,
        fail_before: bool = False,
        stop: bool = False,
        retries: int = 0,
    ) -> None:
        self.name = name
        self.verdict = verdict
        self.fail_before = fail_before
        self.stop = stop
        self.retries = retries

    async def before(self, subject: Subject) -> None:
        subject.log.append(f"before {self.name}")
        if self.fail_before:
            raise Boom(self.name)
        if self.stop:
            subject.stopped = True

    async def after(self, subject: Subject) -> None:
        subject.log.append(f"after {self.name}")

    async def on_error(self, subject: Subject, error: BaseException) -> Verdict:
        subject.log.append(f"on_error {self.name}: {error}")
        if self.retries:
            self.retries -= 1
            return RETRY
        return self.verdict


def core(outcome: str = "ok"):
    async def run(subject: Subject) -> None:
        subject.log.append("core")
        if outcome == "fail":
            raise Boom("core")

    return run


async def test_before_runs_forward_and_after_in_reverse() -> None:
    subject = Subject()
    await Pipeline([Recorder("a"), Recorder("b"), Recorder("c")], core()).run(subject)
    assert subject.log == ["before a", "before b", "before c", "core", "after c", "after b", "after a"]


async def test_an_error_unwinds_through_on_error_innermost_first_and_is_raised() -> None:
    subject = Subject()
    with pytest.raises(Boom):
        await Pipeline([Recorder("a"), Recorder("b")], core("fail")).run(subject)
    assert subject.log == ["before a", "before b", "core", "on_error b: core", "on_error a: core"]


async def test_a_failing_before_unwinds_only_the_middlewares_outside_it() -> None:
    subject = Subject()
    with pytest.raises(Boom):
        await Pipeline([Recorder("a"), Recorder("b", fail_before=True), Recorder("c")], core()).run(subject)
    assert subject.log == ["before a", "before b", "on_error a: b"]


async def test_a_handled_error_is_success_for_the_middlewares_outside() -> None:
    subject = Subject()
    await Pipeline([Recorder("a"), Recorder("b", verdict=HANDLED), Recorder("c")], core("fail")).run(subject)
    unwound = ["on_error c: core", "on_error b: core"]
    assert subject.log == ["before a", "before b", "before c", "core", *unwound, "after a"]


async def test_a_retry_runs_the_middleware_and_everything_inside_it_again() -> None:
    subject = Subject()
    pipeline = Pipeline([Recorder("a"), Recorder("b", retries=1), Recorder("c")], core("fail"))
    with pytest.raises(Boom):
        await pipeline.run(subject)
    once = ["before b", "before c", "core", "on_error c: core", "on_error b: core"]
    assert subject.log == ["before a", *once, *once, "on_error a: core"]


async def test_a_stopped_subject_skips_what_is_inside_and_comes_back_out() -> None:
    subject = Subject()
    await Pipeline([Recorder("a"), Recorder("b", stop=True), Recorder("c")], core()).run(subject)
    assert subject.log == ["before a", "before b", "after b", "after a"]


async def test_an_error_raised_by_on_error_takes_the_first_ones_place() -> None:
    class Translate(Recorder):
        async def on_error(self, subject: Subject, error: BaseException) -> Verdict:
            raise KeyError("translated") from error

    subject = Subject()
    with pytest.raises(KeyError) as raised:
        await Pipeline([Recorder("a"), Translate("t")], core("fail")).run(subject)
    assert isinstance(raised.value.__cause__, Boom)
    assert subject.log[-1] == "on_error a: 'translated'"


async def test_an_error_in_after_reaches_the_middlewares_outside_it() -> None:
    class FailingAfter(Recorder):
        async def after(self, subject: Subject) -> None:
            raise Boom("after")

    subject = Subject()
    await Pipeline([Recorder("a", verdict=HANDLED), FailingAfter("f")], core()).run(subject)
    assert subject.log == ["before a", "before f", "core", "on_error a: after"]
