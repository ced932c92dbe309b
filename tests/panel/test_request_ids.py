"""Request ids (panel.logs.new_request_id): version-4 UUIDs from a per-thread urandom pool."""

import os
import threading
import uuid

from panel.logs import new_request_id


def test_ids_are_distinct_version_4_uuids_across_pool_refills():
    ids = [new_request_id() for _ in range(2_000)]  # ~8 refills of the 4 KiB pool
    assert len(set(ids)) == len(ids)
    for request_id in ids:
        assert request_id.startswith("req_")
        parsed = uuid.UUID(request_id.removeprefix("req_"))
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert parsed.hex == request_id.removeprefix("req_")


def test_threads_draw_from_their_own_pools():
    found: list[str] = []
    lock = threading.Lock()

    def draw():
        mine = [new_request_id() for _ in range(500)]
        with lock:
            found.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == len(found) == 2_000


def test_a_forked_child_never_repeats_its_parents_next_ids():
    new_request_id()  # the pool is filled: the child must not reuse what is left of it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        os.write(write, ",".join(new_request_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent = [new_request_id() for _ in range(10)]
    assert len(child) == 10
    assert not set(child) & set(parent)
