import pytest

from django_relay import await_result
from tests.workers import EchoWorker

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


async def test_relay_through_a_real_runner(start_runner):
    start_runner()
    assert await EchoWorker.relay({"value": [1, "two"]}, timeout=10) == [1, "two"]
    job = await EchoWorker.aenqueue({"value": 7})
    assert await await_result(job, timeout=10) == 7
