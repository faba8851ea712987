"""`eyecare bench run --ray`: the benchmark on a Ray cluster, one model per worker; and `eyecare bench judge
--judge local:DIR --ray`, the same pool of actors with an in-process judge model in each (JudgeWorker),
the driver appending the judgments as judge_run does, with the same fault rules.

Each worker is a Ray actor that finds its Vulkan device (device_map), loads the model once and answers
batches of records. This process, the driver, is the only one that writes: it hands out batches, and
each answer is appended and flushed to the predictions file by the same writer a local run uses
(runner.write_predictions), so a run started locally can be resumed on Ray and the other way round.

Faults:
- A worker that dies (killed process, lost node, out of memory) loses the batches it held; the driver
  starts a new actor in its place (at most MAX_RESTARTS times per worker; Ray places it on any node
  with room) and the records go back to the front of the queue.
- Each of those records is a suspect: which one killed the worker cannot be known (a worker holds up
  to DEPTH calls, and Ray may report a call that had just finished as lost with it). A suspect is
  asked again alone, on a worker with nothing else in flight, so if that worker dies too the record
  is the cause: a record that dies with two workers, the second time alone, is written as failed
  with the reason, and the run goes on. A record that crashes every worker cannot stop the run.
- Ctrl-C or a killed driver loses only the batches in flight (at most DEPTH per worker); everything
  answered before is on disk and a rerun resumes.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional, Sequence

from .data import Record
from .errors import BenchError, MissingDependency
from .judge import JudgeResult
from .runner import RunResult, ask, write_predictions

DEPTH = 2           # batches queued on each worker, so that it never waits for the driver between two
MAX_RESTARTS = 4    # times the driver replaces a dead worker before it gives up on that worker
DEATHS_TO_FAIL = 2  # a record that dies with this many workers (the last time alone) is written as failed


def require_ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingDependency(f"--ray needs the 'ray' package: pip install 'eyecare[ray]' ({exc})") from None
    return ray


class Worker:
    """One model on one device (a Ray actor: the driver wraps this class with ray.remote)."""

    def __init__(self, model: Optional[str], factory: Optional[str], batch_size: int, cwd: Optional[str]):
        import ray

        from .models import BUILTIN, load_model

        self.error = None
        self.device = "none (built-in baseline)"
        try:
            self._place(cwd, model not in BUILTIN)
            self.model, self.name = load_model(model, factory)
            has_generate = callable(getattr(self.model, "generate", None))
            self.step = batch_size if batch_size > 1 and has_generate else 1
        except Exception as exc:  # reported by describe(), so the driver can say what went wrong
            self.error = f"{type(exc).__name__}: {exc}"

    def _place(self, cwd: Optional[str], vulkan: bool) -> None:
        import ray

        from .device_map import worker_device

        # A checkpoint path given relative to the driver's folder, and a factory module in it (as
        # `--model-factory` finds it locally), work on the driver's machine.
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)
            if cwd not in sys.path:
                sys.path.insert(0, cwd)
        if vulkan:
            # Before the model creates its Vulkan context, which reads EYECARE_DEVICE.
            device = worker_device(ray.get_gpu_ids())
            os.environ["EYECARE_DEVICE"] = str(device["index"])
            self.device = f"{device['name']} (Vulkan device {device['index']})"

    def describe(self) -> dict:
        import ray

        core = sys.modules.get("eyecare._core")
        validating = bool(core and core.context_created() and core.device_info()["validation"])
        return {"pid": os.getpid(), "host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id(),
                "device": self.device, "error": self.error, "step": getattr(self, "step", 1),
                "validation_layer": validating}

    def answer(self, records: Sequence[Record]) -> tuple:
        """The (text, error, latency_ms, timings) of each record, and the number of Vulkan validation-layer
        messages this process has seen so far (EYECARE_VALIDATE=1; the tests require none)."""
        results = ask(self.model, records, self.step)
        core = sys.modules.get("eyecare._core")
        return results, core.validation_messages() if core is not None else 0


class JudgeWorker(Worker):
    """One in-process judge model (`bench judge --judge local:DIR --ray`) on one device: loaded once, it
    returns judgment lines; the driver writes them."""

    def __init__(self, directory: str, rubrics: dict, judge: str, attempts: int, max_tokens: int,
                 cwd: Optional[str]):
        from ..endpoint import LocalEndpoint

        self.error, self.step = None, 1
        self.rubrics, self.judge, self.attempts, self.max_tokens = rubrics, judge, attempts, max_tokens
        try:
            self._place(cwd, True)
            self.endpoint = LocalEndpoint(directory)
            self.endpoint.model  # loaded now, so that a checkpoint that cannot load stops the run at once
        except Exception as exc:  # reported by describe()
            self.error = f"{type(exc).__name__}: {exc}"

    def answer(self, rows: Sequence[dict]) -> tuple:
        from .judge import judge_one

        results = [judge_one(self.endpoint, self.rubrics[row["task"]], row, self.judge, attempts=self.attempts,
                             max_tokens=self.max_tokens) for row in rows]
        core = sys.modules.get("eyecare._core")
        return results, core.validation_messages() if core is not None else 0


@dataclass
class _Slot:
    """The driver's view of one worker."""
    number: int
    actor: object
    info: dict = field(default_factory=dict)
    ready: bool = False
    dead: bool = False
    inflight: deque = field(default_factory=deque)   # (ref, [(record, deaths)]) oldest first
    answered: int = 0
    ready_at: float = 0.0
    pids: list = field(default_factory=list)
    error: str = ""                       # why the worker is gone for good
    restarts: int = 0
    validation: dict = field(default_factory=dict)   # pid -> validation-layer messages it reported


@dataclass
class RayRunResult(RunResult):
    workers: list = field(default_factory=list)   # per worker: device, host, pids, records, records_per_s
    deaths: list = field(default_factory=list)    # why each worker process was lost, in order
    records_per_s: float = 0.0                    # answers / seconds from the first worker ready to the last answer

    @property
    def worker_deaths(self) -> int:
        return len(self.deaths)


def _connect(ray, address: Optional[str], init_options: Optional[dict]):
    """Start a local Ray (address None) or join a cluster; returns whether this call started Ray."""
    if ray.is_initialized():
        return False
    options = {"include_dashboard": False, "log_to_driver": False, **(init_options or {})}
    if address:
        options["address"] = address
    try:
        ray.init(**options)
    except (ImportError, ModuleNotFoundError) as exc:
        if address and address.startswith("ray://"):
            raise MissingDependency(f"--ray {address}: ray:// addresses need Ray Client: pip install 'ray[client]' "
                                    f"({exc})") from None
        raise
    except ConnectionError as exc:
        raise BenchError(f"--ray {address}: cannot reach the Ray cluster ({exc})") from None
    return True


def _check_resources(ray, workers: int, cpus: float, gpus: float) -> None:
    have = ray.cluster_resources()
    need = {"CPU": workers * cpus, "GPU": workers * gpus}
    for kind, amount in need.items():
        if amount > have.get(kind, 0) + 1e-9:
            raise BenchError(f"{workers} workers need {amount:g} {kind}s but the Ray cluster has "
                             f"{have.get(kind, 0):g}; use fewer --workers or a smaller --gpus-per-worker")


@contextmanager
def _pool(address: Optional[str], init_options: Optional[dict], workers: Optional[int],
          gpus_per_worker: Optional[float]):
    """Ray joined (or started), the worker count and GPUs each resolved and checked against the cluster:
    yields (ray, state, workers, gpus_per_worker); every actor in state["slots"] is killed on the way out."""
    if gpus_per_worker is not None and not 0 <= gpus_per_worker <= 1:
        raise BenchError(f"--gpus-per-worker must be between 0 and 1 (got {gpus_per_worker:g}): a model runs "
                         "on one Vulkan device; a fraction lets workers share a GPU")
    if workers is not None and workers < 1:
        raise BenchError(f"--workers must be >= 1 (got {workers})")
    ray = require_ray()
    started = _connect(ray, address, init_options)
    state = {"slots": [], "deaths": []}
    try:
        total_gpus = ray.cluster_resources().get("GPU", 0)
        if gpus_per_worker is None:
            gpus_per_worker = 1 if total_gpus >= 1 else 0
        if workers is None:
            workers = max(1, int(total_gpus // gpus_per_worker)) if gpus_per_worker else 1
        _check_resources(ray, workers, 1, gpus_per_worker)
        yield ray, state, workers, gpus_per_worker
    finally:
        for slot in state["slots"]:
            try:
                ray.kill(slot.actor)
            except Exception:  # already gone: nothing to free
                pass
        if started:
            ray.shutdown()


def _summary(state) -> tuple:
    """Per-worker stats, and answers / seconds from the first worker ready to the last answer."""
    stats = [_stats(slot, state.get("ended", 0.0)) for slot in state["slots"]]
    span = state.get("ended", 0.0) - (state.get("started") or 0.0)
    rate = state.get("answered", 0) / span if state.get("started") and span > 0 else 0.0
    return stats, rate


def run_ray(records: Sequence[Record], predictions_path, *, model: Optional[str] = None,
            factory: Optional[str] = None, model_name: Optional[str] = None, batch_size: int = 1,
            workers: Optional[int] = None, gpus_per_worker: Optional[float] = None, address: Optional[str] = None,
            progress: bool = True, overwrite: bool = False, init_options: Optional[dict] = None) -> RayRunResult:
    """Answer every record not yet in `predictions_path` on `workers` Ray actors, each loading the model given
    as for `load_model(model, factory)`. `address`: None starts a local Ray, else "auto", "ray://host:port" or a
    cluster's GCS address; a Ray already initialized in this process is used as it is. `gpus_per_worker`
    defaults to 1 on a cluster with GPUs and 0 (lavapipe) on one without; `workers` to as many as the
    cluster's GPUs allow, or 1 without GPUs."""
    if batch_size < 1:
        raise BenchError(f"--batch-size must be >= 1 (got {batch_size})")
    with _pool(address, init_options, workers, gpus_per_worker) as (ray, state, workers, gpus):
        actor = (Worker, (model, factory, batch_size, os.getcwd()))

        def answer(pending, resumed):
            yield from _dispatch(ray, pending, resumed, state, actor=actor, workers=workers, gpus=gpus,
                                 progress=progress, desc=model_name or "bench")

        result = write_predictions(records, predictions_path, answer, model_name=model_name, overwrite=overwrite)
        stats, rate = _summary(state)
        return RayRunResult(**vars(result), workers=stats, deaths=state["deaths"], records_per_s=rate)


@dataclass
class RayJudgeResult(JudgeResult):
    workers: list = field(default_factory=list)   # as RayRunResult's, "records" being judgments
    deaths: list = field(default_factory=list)
    records_per_s: float = 0.0

    @property
    def worker_deaths(self) -> int:
        return len(self.deaths)


def judge_ray(predictions: Sequence[dict], directory: str, judgments_path, rubrics: dict, *, judge: str,
              attempts: int = 3, max_tokens: int = 1024, workers: Optional[int] = None,
              gpus_per_worker: Optional[float] = None, address: Optional[str] = None, progress: bool = True,
              init_options: Optional[dict] = None) -> RayJudgeResult:
    """`judge_run` with the in-process judge checkpoint `directory` (local:DIR) on `workers` Ray actors, each
    loading it once on its own device; the same judgments file, keys and resume. A judgment during which
    two workers died (the second judging it alone) is written as failed with the reason."""
    from .judge import failed_judgment, judge_run

    with _pool(address, init_options, workers, gpus_per_worker) as (ray, state, workers, gpus):
        actor = (JudgeWorker, (directory, rubrics, judge, attempts, max_tokens, os.getcwd()))

        def failed(row, reason):
            return failed_judgment(row, rubrics[row["task"]], judge, reason)

        def dispatch(todo, done):
            for _, result, _ in _dispatch(ray, todo, done, state, actor=actor, workers=workers, gpus=gpus,
                                          progress=progress, desc=f"judge {judge}", failed=failed,
                                          is_error=lambda line: line["scores"] is None):
                yield result

        result = judge_run(predictions, None, judgments_path, rubrics, judge=judge, dispatch=dispatch)
        stats, rate = _summary(state)
        return RayJudgeResult(**vars(result), workers=stats, deaths=state["deaths"], records_per_s=rate)


def _failed_answer(record, reason):
    return ("", reason, 0.0, None)


def _stats(slot: _Slot, end: float) -> dict:
    elapsed = end - slot.ready_at if slot.ready_at else 0.0
    return {"worker": slot.number, "device": slot.info.get("device"), "host": slot.info.get("host"),
            "pids": list(slot.pids), "records": slot.answered,
            "records_per_s": slot.answered / elapsed if elapsed > 0 else 0.0, "dead": slot.dead,
            "error": slot.error, "validation_layer": slot.info.get("validation_layer"),
            "validation_messages": sum(slot.validation.values())}


def _dispatch(ray, pending, resumed, state, *, actor, workers, gpus, progress, desc, failed=_failed_answer,
              is_error=lambda result: result[1] is not None):
    """Yield (record, result, batch_size) as the workers answer; see the module doc for the fault rules.
    `actor`: (class, constructor arguments) of the workers (Worker, JudgeWorker); `failed(record, reason)` is
    the result of a record that killed DEATHS_TO_FAIL workers; `is_error(result)` counts the errors shown."""
    from ray.exceptions import RayActorError, RayError, RayTaskError
    from tqdm.auto import tqdm

    # Restarts are the driver's, not Ray's (max_restarts=0): a new actor has a known state, so a call that
    # fails on it is a real failure, not a call that raced with a restart.
    remote = ray.remote(actor[0]).options(num_cpus=1, num_gpus=gpus, max_restarts=0, max_task_retries=0)

    def start(slot):
        slot.actor = remote.remote(*actor[1])
        slot.ready = False
        refs[slot.actor.describe.remote()] = (slot, "describe")

    queue = deque((record, 0) for record in pending)   # (record, deaths charged to it)
    refs = {}                                           # ref -> (slot, "describe" | "answer")
    slots = state["slots"]
    for number in range(workers if pending else 0):
        slot = _Slot(number, None)
        slots.append(slot)
        start(slot)
    counts = {"answered": 0, "errors": 0, "started": None}

    def submit(slot):
        while slot.ready and not slot.dead and len(slot.inflight) < DEPTH and queue:
            if slot.inflight and slot.inflight[0][1][0][1]:
                break                         # nothing goes behind a suspect: its worker may die
            if queue[0][1]:                   # a suspect goes alone, to a worker with nothing in flight
                if slot.inflight:
                    break
                batch = [queue.popleft()]
            else:
                batch = []
                while queue and len(batch) < slot.info["step"] and not queue[0][1]:
                    batch.append(queue.popleft())
            ref = slot.actor.answer.remote([record for record, _ in batch])
            slot.inflight.append((ref, batch))
            refs[ref] = (slot, "answer")

    def answers(slot, batch, reply):
        results, slot.validation[slot.info["pid"]] = reply
        slot.answered += len(batch)
        for (record, _), result in zip(batch, results):
            yield record, result, len(batch)

    def lose(slot, reason):
        """The worker died. Its calls that finished are answers; the records of the others are charged with
        the death and go back to the front of the queue, or, charged DEATHS_TO_FAIL times, are written as
        failed. A new actor takes the worker's place."""
        state["deaths"].append(reason)
        back = []
        for ref, batch in slot.inflight:
            refs.pop(ref, None)
            try:
                reply = ray.get(ref) if ray.wait([ref], timeout=0)[0] else None
            except RayError:
                reply = None
            if reply is not None:
                yield from answers(slot, batch, reply)
                continue
            back += [(record, deaths + 1) for record, deaths in batch]
        slot.inflight.clear()
        replace(slot, reason)
        for record, deaths in reversed(back):
            if deaths >= DEATHS_TO_FAIL:
                yield record, failed(record, f"WorkerDied: {deaths} workers died while answering this record, the "
                                            f"last one answering it alone ({reason})"), 1
            else:
                queue.appendleft((record, deaths))

    def replace(slot, reason):
        try:
            ray.kill(slot.actor)               # a worker that is unreachable but alive must not hold its GPU
        except Exception:  # already gone
            pass
        if slot.restarts >= MAX_RESTARTS:
            slot.dead, slot.ready, slot.error = True, False, f"died {slot.restarts + 1} times, last: {reason}"
            return
        slot.restarts += 1
        start(slot)

    def postfix(bar):
        now = time.monotonic()
        rates = [f"w{s.number} {s.answered / max(now - s.ready_at, 1e-9):.2f}/s" if s.ready_at else f"w{s.number} -"
                 for s in slots]
        total = counts["answered"] / max(now - counts["started"], 1e-9) if counts["started"] else 0.0
        extra = (f" | {len(state['deaths'])} worker deaths" if state["deaths"] else "") + \
                (f" | {counts['errors']} errors" if counts["errors"] else "")
        bar.set_postfix_str(f"{' '.join(rates)} | total {total:.2f}/s{extra}")

    with tqdm(total=resumed + len(pending), initial=resumed, unit="rec", desc=desc, disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        while queue or any(slot.inflight for slot in slots):
            for slot in slots:
                submit(slot)
            if not refs:
                raise BenchError(f"every Ray worker died ({len(state['deaths'])} deaths, each worker replaced up to "
                                 f"{MAX_RESTARTS} times; last: {slots[-1].error}); {len(queue)} records "
                                 "unanswered; rerun to resume")
            (ref,), _ = ray.wait(list(refs), num_returns=1)
            slot, kind = refs.pop(ref)
            if kind == "describe":
                try:
                    info = ray.get(ref)
                except RayError as exc:      # it died while starting: its node was lost, or it was killed
                    reason = f"worker {slot.number} while starting: {type(exc).__name__}: {str(exc).strip()[:300]}"
                    state["deaths"].append(reason)
                    replace(slot, reason)
                    continue
                if info["error"]:
                    raise BenchError(f"Ray worker {slot.number} on {info['host']} cannot start: {info['error']}")
                slot.info, slot.ready, slot.ready_at = info, True, slot.ready_at or time.monotonic()
                slot.pids.append(info["pid"])
                counts["started"] = counts["started"] or slot.ready_at
                continue
            try:
                reply = ray.get(ref)
            except RayActorError as exc:      # the process died, or its node
                out = lose(slot, f"worker {slot.number} (pid {slot.info.get('pid')} on {slot.info.get('host')}): "
                                 f"{type(exc).__name__}")
            except RayTaskError as exc:       # not the model's error (ask() keeps those per record): ours
                raise BenchError(f"Ray worker {slot.number} failed: {exc}") from None
            except RayError as exc:           # out of memory, a lost object: the worker's work is gone
                out = lose(slot, f"worker {slot.number}: {type(exc).__name__}")
            else:
                batch = next(b for r, b in slot.inflight if r == ref)
                slot.inflight = deque((r, b) for r, b in slot.inflight if r != ref)
                out = answers(slot, batch, reply)
            for record, result, size in out:
                yield record, result, size
                counts["answered"] += 1
                counts["errors"] += is_error(result)
                bar.update(1)
            postfix(bar)
            state.update(answered=counts["answered"], started=counts["started"], ended=time.monotonic())
