"""OneAhead: the review encode stage's batches, finished in order, at most one started ahead."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from stream_app.reviews import OneAhead


class Log:
    def __init__(self) -> None:
        self.finished: list[str] = []
        self.failures: list[BaseException] = []

    def finish(self, name: str) -> Callable[[str], Awaitable[None]]:
        async def run(result: str) -> None:
            await asyncio.sleep(0)
            self.finished.append(f"{name}:{result}")

        return run


def test_batches_finish_in_submission_order_even_when_a_later_encoding_is_done_first() -> None:
    async def main() -> list[str]:
        log = Log()
        ahead = OneAhead(log.failures.append)
        loop = asyncio.get_running_loop()
        first: asyncio.Future[str] = loop.create_future()
        second: asyncio.Future[str] = loop.create_future()
        second.set_result("b")  # the later batch's work is done before the first one's
        submitted = asyncio.ensure_future(ahead.submit(first, log.finish("1")))
        await asyncio.sleep(0.01)
        assert submitted.done()  # one batch unfinished: the stage goes on taking the next
        second_submit = asyncio.ensure_future(ahead.submit(second, log.finish("2")))
        await asyncio.sleep(0.01)
        assert log.finished == []  # 2 waits for 1, and the stage waits for 1 too
        assert not second_submit.done()
        first.set_result("a")
        await second_submit
        await asyncio.sleep(0.01)
        assert log.failures == []
        return log.finished

    assert asyncio.run(main()) == ["1:a", "2:b"]


def test_the_last_batch_finishes_without_another_batch_behind_it() -> None:
    async def main() -> list[str]:
        log = Log()
        ahead = OneAhead(log.failures.append)
        work: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await ahead.submit(work, log.finish("only"))
        assert ahead.unfinished == 1
        work.set_result("x")
        for _ in range(10):
            await asyncio.sleep(0)
        assert ahead.unfinished == 0
        return log.finished

    assert asyncio.run(main()) == ["only:x"]


def test_a_failed_batch_is_reported_once_and_no_later_batch_is_finished() -> None:
    async def main() -> tuple[list[str], list[BaseException]]:
        log = Log()
        ahead = OneAhead(log.failures.append)
        loop = asyncio.get_running_loop()
        works: list[asyncio.Future[str]] = [loop.create_future() for _ in range(3)]
        works[0].set_result("a")
        works[1].set_exception(RuntimeError("encoder broke"))
        works[2].set_result("c")
        for i, work in enumerate(works):
            await ahead.submit(work, log.finish(str(i)))
        await asyncio.sleep(0.01)
        return log.finished, log.failures

    finished, failures = asyncio.run(main())
    assert finished == ["0:a"]  # batch 2 is not acked after the lost batch 1
    assert len(failures) == 1 and isinstance(failures[0], RuntimeError) and "encoder broke" in str(failures[0])


def test_a_failing_finish_is_reported_and_stops_the_batches_after_it() -> None:
    async def main() -> tuple[list[str], list[BaseException]]:
        log = Log()
        ahead = OneAhead(log.failures.append)
        loop = asyncio.get_running_loop()

        async def broken_send(result: str) -> None:
            raise OSError("broker gone")

        for i, finish in enumerate((log.finish("0"), broken_send, log.finish("2"))):
            work: asyncio.Future[str] = loop.create_future()
            work.set_result(str(i))
            await ahead.submit(work, finish)
        await asyncio.sleep(0.01)
        return log.finished, log.failures

    finished, failures = asyncio.run(main())
    assert finished == ["0:0"]
    assert [type(f) for f in failures] == [OSError]


@pytest.mark.parametrize("n", [1, 5])
def test_submit_returns_with_at_most_one_batch_unfinished(n: int) -> None:
    async def main() -> list[int]:
        log = Log()
        ahead = OneAhead(log.failures.append)
        loop = asyncio.get_running_loop()
        seen: list[int] = []
        pending: list[asyncio.Future[str]] = []
        for i in range(n):
            work: asyncio.Future[str] = loop.create_future()
            pending.append(work)
            submitting = asyncio.ensure_future(ahead.submit(work, log.finish(str(i))))
            if i > 0:
                pending[i - 1].set_result("r")  # the previous batch's encoding ends
            await submitting
            seen.append(ahead.unfinished)
        return seen

    assert asyncio.run(main()) == [1] * n
