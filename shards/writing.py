"""Turns each shard's inputs into the shard and its record. Each shard depends only on its own
inputs and the plan, so shards can be written by different processes, in any order, with the
same bytes: with several shards, ``--workers`` processes each write whole shards (no GIL, no
image copied between processes); with one shard, threads share its images."""

from __future__ import annotations

import functools
import json
import itertools
import multiprocessing
import os
import select
import threading
import time
from collections import Counter, deque
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .boxes import RefusedBoxes, stored_box_fields
from .durable import write_text_atomic
from .errors import ShardsError
from .images import ImageOptions, PreparedImage, RejectedImage, prepare_image
from .outdir import OutputLayout
from .plan import DIGEST_MODULUS, BuildPlan, input_digest, shard_order
from .sources import InputItem, second_key
from .spill import read_spill
from .tarwriter import ShardTarWriter


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its number and its inputs in source order, listed or in a spill file."""

    shard: int
    items: list[InputItem] | None = None
    spill: str | None = None  # deleted once the shard is complete

    def load(self) -> list[InputItem]:
        return self.items if self.items is not None else read_spill(Path(self.spill))

    def done(self) -> None:
        if self.spill:
            Path(self.spill).unlink(missing_ok=True)


def read_locator(locator: tuple[str, int, int]) -> bytes:
    """The bytes an InputItem points at."""
    path, offset, size = locator
    with open(path, "rb") as file:
        if size < 0:
            return file.read()
        file.seek(offset)
        return file.read(size)


def _prepare(item: InputItem | None, options: ImageOptions):
    if item is None:
        return None
    if item.rejected:
        return item, RejectedImage(item.rejected), 0
    data = read_locator(item.locator)
    return item, prepare_image(data, options), len(data)


def write_shards(
    jobs: list[ShardJob], plan: BuildPlan, layout: OutputLayout, class_index: dict[str, int],
    *, workers: int, strict: bool, on_progress: Callable[[int, int], None],
) -> None:
    """Write every job's shard and its record; ``on_progress(images, bytes)`` reports work done."""
    if workers > 1 and len(jobs) > 1:
        _write_in_processes(jobs, plan, layout, class_index, min(workers, len(jobs)), strict, on_progress)
    else:
        _write_in_threads(jobs, plan, layout, class_index, workers, strict, lambda size: on_progress(1, size))


def _write_in_processes(jobs, plan, layout, class_index, processes, strict, on_progress) -> None:
    # forkserver: children start from a clean process (no copied threads or locks) that has
    # already imported this module, so a child starts in milliseconds.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["shards.writing"])
    counters = (context.Value("q", 0), context.Value("q", 0))  # images, bytes written so far
    others = set(multiprocessing.active_children())  # a caller's own: not the pool's to end
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_start_worker,
                             initargs=(*counters, os.getpid())) as pool:
        futures = [pool.submit(_write_counted, job, plan, layout, class_index, strict) for job in jobs]
        reported = (0, 0)
        try:
            while futures:
                finished, pending = wait(futures, timeout=0.25, return_when=FIRST_EXCEPTION)
                now = (counters[0].value, counters[1].value)
                on_progress(now[0] - reported[0], now[1] - reported[1])
                reported = now
                for future in finished:
                    future.result()  # re-raises a worker's error (e.g. --strict) here
                futures = list(pending)
        except KeyboardInterrupt:
            # Ctrl-C reaches the workers too (one process group), SIGTERM (shards.errors.Terminated)
            # only this process: the pool's exit would wait for every shard still queued. The
            # unfinished shards are temporary files, which --resume replaces.
            for worker in set(multiprocessing.active_children()) - others:
                worker.terminate()
            raise


_counters: tuple = ()  # set in each worker process by _start_worker (multiprocessing's idiom)


def _start_worker(images, size, build_pid: int) -> None:
    global _counters
    _counters = (images, size)
    threading.Thread(target=_end_with, args=(build_pid,), name="end-with-the-build", daemon=True).start()


def _end_with(build_pid: int) -> None:
    """Ends this worker when the build process is gone. A build killed by SIGKILL or SIGTERM (a
    scheduler's, ``kill PID``) left its workers and the forkserver running for good: the workers
    hold the write ends of their own task queue and of the forkserver's "alive" pipe, so neither
    ever reads an end of file. A pidfd wakes this thread the moment the build ends (Linux 5.3);
    elsewhere it looks once a second."""
    try:
        descriptor = os.pidfd_open(build_pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd: not Linux, or an older kernel
        while _alive(build_pid):
            time.sleep(1.0)
        os._exit(1)
    select.select([descriptor], [], [])
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's: the pid was reused, the build is gone
        return False
    return True


def _write_counted(job, plan, layout, class_index, strict) -> None:
    images, size = _counters

    def count(image_bytes: int) -> None:
        with images.get_lock():
            images.value += 1
        with size.get_lock():
            size.value += image_bytes

    _write_in_threads([job], plan, layout, class_index, 1, strict, count)


def _write_in_threads(jobs, plan, layout, class_index, workers, strict, on_image) -> None:

    def tasks() -> Iterator[InputItem | None]:
        for job in jobs:
            items = job.load()  # one shard's inputs at a time: memory does not grow with the data set
            for position in shard_order(len(items), plan.seed, job.shard):
                yield items[position]
            yield None  # end of this shard

    prepare = functools.partial(_prepare, options=plan.image_options)
    results = _ordered_map(prepare, tasks(), workers)
    try:
        for job in jobs:
            _write_one(job, plan, layout, class_index, results, strict, on_image)
    finally:
        results.close()  # stops the workers if a shard failed


def _ordered_map(function, items: Iterator, workers: int, chunk: int = 8) -> Iterator:
    """``map`` over ``workers`` threads (inline for one), in input order, with a bounded number
    of chunks in flight: ``Pool.imap`` would read all inputs ahead and keep every finished image
    in memory while the single writer catches up.

    Threads, not processes: Pillow releases the GIL while decoding, resizing and encoding, and
    file reads release it too, so threads scale without copying every image between processes.
    Measured on 2 cores (bench/results/shards_cpu_threads_vs_processes.txt): re-encoding ran
    2.13x faster than one worker with 2 threads, 1.78x with 2 spawned processes; pass-through
    ran at 174 MB/s with threads, 107 MB/s with processes.
    """
    if workers <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(workers) as executor:
        pending: deque = deque()
        while batch := list(itertools.islice(items, chunk)):
            pending.append(executor.submit(_map_chunk, function, batch))
            if len(pending) >= 4 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _map_chunk(function, batch: list) -> list:
    return [function(item) for item in batch]


def _write_one(job, plan, layout, class_index, results, strict, on_image) -> None:
    name = plan.shard_name(job.shard)
    tally = _ShardTally()
    with ShardTarWriter(*layout.shard_files(name)) as writer:
        while (prepared := next(results)) is not None:
            item, result, input_size = prepared
            key, reason = tally.add(item, result, input_size)
            if reason:
                if strict:
                    raise ShardsError(f"--strict: {item.source} rejected: {reason}")
            else:
                index = class_index[item.wnid]
                tally.class_counts[index] += 1
                meta = _sample_json(item, result, tally.box_fields(item, result))
                writer.add_sample(key, [("cls", str(index).encode()), (result.extension, result.data), ("json", meta)])
            on_image(len(result.data) if isinstance(result, PreparedImage) else 0)
    record = {**vars(writer.written), **tally.as_record()}
    write_text_atomic(layout.record(name), json.dumps(record, sort_keys=True))
    job.done()


def _sample_json(item: InputItem, result: PreparedImage, box_fields: dict) -> bytes:
    details = item.details if item.details is not None else {"wnid": item.wnid}
    meta = {"width": result.width, "height": result.height, "source": item.source, **details, **box_fields}
    return json.dumps(meta, sort_keys=True).encode()


class _ShardTally:
    """What a shard's record says beyond the writer's numbers."""

    def __init__(self):
        self.inputs = self.input_bytes = self.digest = 0
        self.rejected: list[list[str]] = []
        self.reencoded: Counter = Counter()
        self.class_counts: Counter = Counter()
        self.with_boxes = 0
        self.boxes_refused: list[list[str]] = []
        self._sources_by_key: dict[str, str] = {}

    def add(self, item: InputItem, result, input_size: int) -> tuple[str, str | None]:
        """The key to write the input under, and why it is rejected (None: it is written). Inputs
        with one key always share a shard (the key chooses it), so this sees every clash."""
        self.inputs += 1
        self.input_bytes += input_size
        self.digest = (self.digest + input_digest(item.source)) % DIGEST_MODULUS
        reason = result.reason if isinstance(result, RejectedImage) else None
        key = item.key
        if reason is None and key in self._sources_by_key:
            if self._sources_by_key[key] != item.source:
                key = second_key(item.key, item.source)
            if key in self._sources_by_key:
                # the same path twice (a tar can hold a member twice): one image, written once
                reason = f"duplicate sample key: {key} (also {self._sources_by_key[key]})"
        if reason:
            self.rejected.append([item.source, reason])
            return key, reason
        self._sources_by_key[key] = item.source
        if result.reencoded:
            self.reencoded[result.reencoded] += 1
        return key, None

    def box_fields(self, item: InputItem, result: PreparedImage) -> dict:
        """The .json fields of a written sample's boxes ({} without), counted."""
        fields = stored_box_fields(item.boxes, result) if item.boxes else {}
        if isinstance(fields, RefusedBoxes):
            self.boxes_refused.append([item.source, fields.reason])
            return {}
        self.with_boxes += bool(fields)
        return fields

    def as_record(self) -> dict:
        return {
            "inputs": self.inputs, "input_bytes": self.input_bytes, "digest": self.digest,
            "rejected": self.rejected, "reencoded": dict(self.reencoded),
            "class_counts": {str(k): v for k, v in self.class_counts.items()},
            "with_boxes": self.with_boxes, "boxes_refused": self.boxes_refused,
        }
