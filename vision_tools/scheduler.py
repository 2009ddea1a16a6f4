"""Continuous batching of chat requests over one model, with a bounded queue, deadlines and
cancellation.

One worker thread owns the model. It keeps up to ``max_batch`` conversations running; every
round it steps each running conversation by one assistant turn (conversations with the same
options share one batched ``generate``), then a finished conversation answers its request and
frees its slot for a waiting one at once, so a short request never waits for a long one's
remaining turns. With ``chunk_tokens`` N a round decodes at least N tokens of each conversation
(``ToolEngine.advance``) and ends as soon as a waiting request fits or a quarter of the round's
conversations ended their turns (:meth:`Scheduler._pause`): those run their tools and start
their next turns without waiting for the batch's longest turn. A request's ``n`` trajectories
are ``n`` conversations.

A :class:`Job` is cancelled when its client disconnects, when its deadline passes, or when the
server shuts down; the generator checks at every token, so cancelled work stops within one
decoding step and is never stepped again. Waiting jobs beyond ``max_queue`` are refused (429).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from vision_tools.engine import ToolEngine, Trajectory
from vision_tools.generation import make_generator
from vision_tools.openai_response import turn_json
from vision_tools.openai_schema import ChatRequest
from vision_tools.request_images import ApiError
from vision_tools.serve_config import ServeConfig


@dataclass
class Job:
    """One request in the scheduler: its conversations, its future, and (streaming) its events."""

    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    result: asyncio.Future  # -> list[Trajectory], or an ApiError
    # streaming: (choice index, turn record, its ids, their log-probs) as turns commit
    events: asyncio.Queue | None = None
    deadline: float | None = None  # time.monotonic() after which the job is answered 504
    error: ApiError | None = None  # set once the job is cancelled (why)
    convs: list = field(default_factory=list)
    reported: list[int] = field(default_factory=list)  # turns already sent, per conversation
    start: float = field(default_factory=time.monotonic)
    group: str = ""  # conversations with the same group step together

    def cancel(self, error: ApiError) -> None:
        if self.error is None:
            self.error = error

    def stopped(self) -> bool:
        if self.error is None and self.deadline is not None and time.monotonic() > self.deadline:
            self.error = ApiError(
                504, "request_timeout", "the request took longer than the server's --request-timeout"
            )
        return self.error is not None

    def resolve(self, value) -> None:
        """Answer the request (a result or an ApiError) from any thread; later answers are ignored."""
        self.send(_set, self.result, value)
        if self.events is not None:
            self.send(self.events.put_nowait, None)

    def send(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the request's event loop (nothing if the server has stopped)."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _set(fut: asyncio.Future, value) -> None:
    if fut.done():
        return
    if isinstance(value, Exception):
        fut.set_exception(value)
    else:
        fut.set_result(value)


class Scheduler:
    def __init__(self, model, processor, tools, cfg: ServeConfig):
        self.model, self.processor, self.tools, self.cfg = model, processor, tools, cfg
        self.generator = make_generator(
            cfg.engine.generator, model, processor, prefixes=cfg.prefix_cache, options=cfg.vllm
        )
        self.generator.cancelled = self._row_cancelled
        self.generator.pause = self._pause
        self.groups = 0  # groups stepped in the current round
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.by_key: dict[int, Job] = {}
        self.keys = itertools.count()
        self.engines: dict[str, ToolEngine] = {}
        self.cond = threading.Condition()
        self.stopping = False
        self.seconds = 1.0  # moving average of a request's time in the server (for Retry-After)
        self.stats = dict.fromkeys(
            ("rounds", "finished", "cancelled", "timed_out", "rejected", "peak_batch"), 0
        )
        self.thread = threading.Thread(target=self._loop, daemon=True, name="mmpost-engine")
        self.thread.start()

    # -- the event loop's side ----------------------------------------------------------------

    def submit(self, req: ChatRequest, stream: bool = False) -> Job:
        loop = asyncio.get_running_loop()
        timeout = self.cfg.request_timeout
        job = Job(req, loop, loop.create_future(), asyncio.Queue() if stream else None,
                  time.monotonic() + timeout if timeout else None)  # fmt: skip
        with self.cond:
            if self.stopping:
                raise ApiError(503, "shutting_down", "the server is shutting down")
            if sum(j.request.n for j in self.waiting) + req.n > self.cfg.max_queue:
                self.stats["rejected"] += 1
                wait = math.ceil(self.seconds * (1 + len(self.waiting) / self.cfg.max_batch))
                raise ApiError(429, "queue_full", f"{len(self.waiting)} requests are waiting; retry in {wait} s",
                               {"Retry-After": str(wait)})  # fmt: skip
            self.waiting.append(job)
            self.cond.notify()
        return job

    def health(self) -> dict:
        with self.cond:
            return {
                **self.stats,
                "queued": len(self.waiting),
                "running": sum(len(j.convs) for j in self.running),
            }

    def shutdown(self) -> None:
        """Refuse new work, answer every queued and running request with 503, stop generating."""
        with self.cond:
            self.stopping = True
            jobs = [*self.waiting, *self.running]
            self.cond.notify()
        for j in jobs:
            j.cancel(ApiError(503, "shutting_down", "the server is shutting down"))
            j.resolve(j.error)

    # -- the worker thread ------------------------------------------------------------------------

    def _row_cancelled(self, key: int) -> bool:
        job = self.by_key.get(key)
        return self.stopping or job is None or job.stopped()

    def _pause(self, done: int, rows: int) -> bool:
        """End the call (after ``chunk_tokens``): other groups of requests (other options) wait
        for their call, a waiting request fits in the free slots, or a quarter of the call's
        rows have ended their turns and wait to start the next."""
        free = self.cfg.max_batch - sum(len(j.convs) for j in self.running)
        waiting = self.waiting[0].request.n if self.waiting else None
        return self.groups > 1 or (waiting is not None and waiting <= free) or 4 * done >= rows

    def _loop(self) -> None:
        while True:
            with self.cond:
                if not self.running:
                    while not self.waiting and not self.stopping:
                        self.cond.wait()
                    if self.stopping:
                        return
                    self.cond.wait(self.cfg.batch_wait_ms / 1000)  # gather a batch
                admitted = self._admit()
            for job in admitted:  # a job cancelled while it waited is answered without starting
                self._drop(job) if job.stopped() else self._start(job)
            self._drop_stopped()
            if self.stopping:
                return
            groups: dict[str, list] = {}
            for job in self.running:
                groups.setdefault(job.group, []).extend(c for c in job.convs if c.finish is None)
            self.groups = len(groups)  # other groups wait for this one's call: see _pause
            for group, convs in groups.items():
                self._step(group, convs)
            self._report()

    def _admit(self) -> list[Job]:
        """Waiting jobs that fit in the free slots (under ``self.cond``); always one if idle."""
        used = sum(len(j.convs) for j in self.running)
        out = []
        while self.waiting and (used + self.waiting[0].request.n <= self.cfg.max_batch or not used):
            job = self.waiting.popleft()
            used += job.request.n
            out.append(job)
        return out

    def _engine(self, job: Job) -> ToolEngine:
        req = job.request
        key = repr(req.engine) + json.dumps([t.schema() for t in req.tools])
        if req.seed is not None:  # a seeded request steps alone, so its samples depend on its seed only
            key += f"seed={req.seed}/{id(job)}"
        job.group = key
        if key not in self.engines:
            if len(self.engines) > 64:  # keep the engines of running jobs only
                self.engines = {j.group: self.engines[j.group] for j in self.running}
            self.engines[key] = ToolEngine(self.model, self.processor, req.tools, req.engine, self.generator)
        return self.engines[key]

    def _start(self, job: Job) -> None:
        req = job.request
        try:
            keys = [next(self.keys) for _ in range(req.n)]
            job.convs = self._engine(job).start(
                [req.prompt] * req.n, questions=[req.question] * req.n, keys=keys
            )
            self.by_key.update(dict.fromkeys(keys, job))
            job.reported = [0] * req.n
            self.running.append(job)
            self.stats["peak_batch"] = max(self.stats["peak_batch"], sum(len(j.convs) for j in self.running))
        except (ValueError, ApiError) as e:  # the prompt does not fit the model (budget, tokens)
            self._finish(job, e if isinstance(e, ApiError) else ApiError(400, "bad_request", str(e)))
        except Exception as e:
            self._finish(job, ApiError(500, "internal_error", f"{type(e).__name__}: {e}"))

    def _step(self, group: str, convs: list) -> None:
        engine = self.engines[group]
        seed = self.by_key[convs[0].key].request.seed
        if seed is not None:  # the same seed gives the same samples: reseed per turn of this job
            torch.manual_seed((seed + 7919 * len(convs[0].turns)) % 2**63)
        try:  # a seeded job takes whole turns: where a round is cut depends on the other traffic
            if self.cfg.chunk_tokens and seed is None:
                engine.advance(convs, self.cfg.chunk_tokens)
            else:
                engine.step(convs)
            self.stats["rounds"] += 1
        except Exception as e:  # never let one bad batch kill the worker
            err = ApiError(500, "internal_error", f"{type(e).__name__}: {e}")
            for job in {self.by_key[c.key] for c in convs}:
                job.cancel(err)

    def _report(self) -> None:
        """Stream new turns; answer and remove the jobs whose conversations all finished."""
        self._drop_stopped()
        for job in list(self.running):
            if job.events is not None:
                for i, c in enumerate(job.convs):
                    for r in c.turns[job.reported[i] :]:
                        image = (
                            c.images[r.image_index]
                            if r.image_index is not None and job.request.include_images
                            else None
                        )
                        ids = c.ids[r.span[0] : r.span[1]] if job.request.logprobs else None
                        job.send(job.events.put_nowait, (i, turn_json(r, image, ids), ids, r.logprobs))
                    job.reported[i] = len(c.turns)
            if all(c.finish is not None for c in job.convs):
                engine = self.engines[job.group]
                self._finish(job, [engine.trajectory(c) for c in job.convs])
                self.stats["finished"] += 1
                self.seconds = 0.8 * self.seconds + 0.2 * (time.monotonic() - job.start)

    def _drop_stopped(self) -> None:
        for job in [j for j in self.running if j.stopped()]:
            self._drop(job)

    def _drop(self, job: Job) -> None:
        self.stats["timed_out" if job.error.status == 504 else "cancelled"] += 1
        self._finish(job, job.error)

    def _finish(self, job: Job, value: list[Trajectory] | ApiError) -> None:
        if job in self.running:
            self.running.remove(job)
        for c in job.convs:
            self.by_key.pop(c.key, None)
            c.session.clear()  # its KV cache (the cached generator's), at once
        job.resolve(value)
