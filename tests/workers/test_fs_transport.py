"""The embedded broker's transport (workers.fs_transport): a message is never seen half-written.

kombu's own filesystem ``_put`` creates the file in the queue folder before writing it, so a consumer polling
at that moment moves away an empty file (message lost, ``JSONDecodeError`` in the consumer). The test races a
producer thread against a consumer polling as fast as it can and checks that every message arrives intact.
"""

from __future__ import annotations

import threading

import pytest
from kombu import Connection

from workers import fs_transport


def _conn(tmp_path):
    fs_transport.register()
    folder, staging = tmp_path / "queue", tmp_path / "staging"
    folder.mkdir(exist_ok=True)
    return Connection(
        f"{fs_transport.SCHEME}://",
        transport_options={
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "staging_folder": str(staging),
            "control_folder": str(tmp_path / "control"),
            "store_processed": False,
            "polling_interval": 0.0,
        },
    )


def test_scheme_resolves_to_the_atomic_transport(tmp_path):
    with _conn(tmp_path) as conn:
        assert isinstance(conn.transport, fs_transport.Transport)


@pytest.mark.timeout(120)
def test_racing_producer_and_consumer_lose_no_message(tmp_path):
    n = 400
    payload = "x" * 200_000  # large enough that writing takes a while
    got, errors = [], []
    with _conn(tmp_path) as prod_conn, _conn(tmp_path) as cons_conn:
        q = cons_conn.SimpleQueue("race")
        pq = prod_conn.SimpleQueue("race")

        def produce():
            for i in range(n):
                pq.put({"i": i, "pad": payload})

        t = threading.Thread(target=produce)
        t.start()
        while len(got) < n:
            try:
                msg = q.get(timeout=30)
            except q.Empty:
                break
            except Exception as exc:  # a torn message surfaces here (JSONDecodeError)
                errors.append(repr(exc))
                continue
            got.append(msg.payload["i"])
            assert len(msg.payload["pad"]) == len(payload)
            msg.ack()
        t.join()
    assert errors == []
    assert sorted(got) == list(range(n))
    assert list((tmp_path / "staging").iterdir()) == []  # nothing left behind in the staging folder
