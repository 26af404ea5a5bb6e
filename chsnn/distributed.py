"""Data-parallel training over several processes (``torchrun``).

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m chsnn train ...

``torchrun`` starts one process (rank) per GPU or CPU share and sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; ``chsnn train`` sees them, joins the
process group (NCCL when the model is on CUDA, each rank on ``cuda:LOCAL_RANK``;
gloo on CPU) and trains data-parallel. Without them nothing here runs and every
helper is a no-op (world size 1).

Design
------
* ``batch_size`` is the global batch. Every rank walks the same shuffled order
  (fixed by seed and epoch) and takes its own contiguous part of each batch
  (:func:`shard`). A rank's loss is its part's mean cross-entropy times its
  share of the batch, and after ``backward()`` the gradients are summed over
  the ranks (:func:`all_reduce_grads`, one collective per dtype) before
  ``optimizer.step()``: the gradient of the global batch's mean loss, as in
  one process. Steps per epoch, learning-rate schedule, topology-update steps
  and ``max_steps`` are the single-process ones, so a checkpoint resumes on
  any number of ranks.
* Gradients are all-reduced by hand rather than by ``DistributedDataParallel``:
  the engine's post-accumulate-grad hooks mask each rank's gradient as it is
  accumulated (masking commutes with the sum) and RigL accumulates the local
  dense gradient; with DDP, correctness would rest on the order of those hooks
  against DDP's reducer hooks (in torch 2.13 the engine's run first, so DDP
  would also work), DDP would broadcast every buffer (the masks and their
  float copies included) at every forward, and a short last batch can leave a
  rank with no sample, which DDP cannot skip. The price is no overlap of
  communication with the backward pass.
* Topology: every rank runs the same engine code on identical weights and
  masks, and the statistics a decision reads are reduced over the ranks first
  (:class:`DistributedSync`, the engine's ``sync`` hooks): calibration and
  activity statistics for SSCTI/CSTI, SSWI and LRS (sums and sample counts
  summed, with the correlation's running sums), RigL's accumulated dense
  gradients (summed), Hebb-SET's batch-mean activations (weighted by each
  rank's share of the batch). After each decision (every layer's initial
  topology and weights, every topology update) rank 0's outcome is broadcast:
  masks, the sparse layers' weights and weight-shaped optimizer state, the
  engine's RNG state and its frozen layers. In exact arithmetic the ranks
  already agree; the broadcast keeps them identical when nondeterministic
  kernels (GPU atomics) or float ties would not.
* Evaluation: each rank scores its part of every test batch; counts, losses,
  energy and firing-rate spike counts are summed over the ranks. Float
  buffers (BatchNorm running statistics) are averaged over the ranks at the
  end of every epoch.
* Only rank 0 writes the run directory and prints; ``summary.json`` records
  ``world_size`` and ``ranks_agree`` (:func:`ranks_agree`: every rank's masks
  and parameters hash to the same value).
* Every collective runs under the process group's timeout (``dist_timeout``
  seconds, default 300; ``CHSNN_DIST_TIMEOUT`` overrides it). A rank that dies
  or hangs makes the others fail with :class:`DistributedError` ("rank 0 of 2
  lost contact with the other ranks ...") instead of waiting forever: gloo
  raises on a closed connection at once, and on a silent peer after the
  timeout. (NCCL's watchdog aborts the process after the timeout instead.)
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

from chsnn.contracts import MASK, MASK_F
from chsnn.sparse import EngineSync

DEFAULT_TIMEOUT = 300.0
TIMEOUT_ENV = "CHSNN_DIST_TIMEOUT"

_timeout = DEFAULT_TIMEOUT


class DistributedError(RuntimeError):
    """A collective failed: another rank died, hung or cannot be reached."""


# The process group -----------------------------------------------------------------


def launched() -> bool:
    """True when started by torchrun (or alike) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def env_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) or 0)


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def timeout_seconds(configured=None) -> float:
    """The collectives' timeout: ``CHSNN_DIST_TIMEOUT``, else the config's
    ``dist_timeout``, else 300 s."""
    text = os.environ.get(TIMEOUT_ENV)
    value = text if text not in (None, "") else configured
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = -1.0
    if not value > 0:
        source = TIMEOUT_ENV if text not in (None, "") else "dist_timeout"
        raise ValueError(f"{source}={text if text not in (None, '') else configured!r} is not allowed; it must be a number of seconds > 0")
    return value


def init(device: torch.device, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Join the process group torchrun described in the environment: NCCL
    for a CUDA device (made the current one), gloo otherwise."""
    global _timeout
    _timeout = float(timeout)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Imported after the group exists (the optimizers import it), torch._dynamo
    # keeps a reference to it that outlives destroy_process_group(), so gloo's
    # worker threads live into interpreter shutdown and can abort it
    # ("terminate called without an active exception"). Imported first, it does not.
    # (importlib: an `import torch._dynamo` here would make `torch` a local
    # name of this function, unbound at the set_device call above.)
    importlib.import_module("torch._dynamo")

    with guard("joining the process group"):
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=_timeout))


def teardown() -> None:
    if active():
        dist.destroy_process_group()


def lost_contact(what: str, exc: BaseException | None = None) -> str:
    first = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else type(exc).__name__ if exc else ""
    detail = f" [{what}: {first}]" if first else f" [{what}]"
    return (
        f"rank {rank()} of {world_size() if active() else os.environ.get('WORLD_SIZE', '?')} lost contact with the other ranks "
        f"(a rank died or hung; see its log); timeout {_timeout:g} s (dist_timeout){detail}"
    )


@contextlib.contextmanager
def guard(what: str):
    """Turn a failed collective (gloo's RuntimeError, torch's DistError,
    a refused connection) into a :class:`DistributedError` that says so."""
    try:
        yield
    except DistributedError:
        raise
    except (RuntimeError, ConnectionError, TimeoutError) as exc:
        raise DistributedError(lost_contact(what, exc)) from exc


def _backend_device() -> torch.device:
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(fn, tensor: torch.Tensor, what: str, *args) -> torch.Tensor:
    """Run ``fn(buffer, *args)`` in place on ``tensor``, through a buffer on
    the backend's device (bool tensors travel as uint8)."""
    dev = _backend_device()
    view = tensor.view(torch.uint8) if tensor.dtype == torch.bool else tensor
    direct = view.device == dev and view.is_contiguous()
    buf = view if direct else view.to(dev).contiguous()
    with guard(what):
        fn(buf, *args)
    if not direct:
        view.copy_(buf)
    return tensor


# Collectives ---------------------------------------------------------------------------


def all_reduce_(tensor: torch.Tensor, what: str = "an all-reduce") -> torch.Tensor:
    """In place: the sum over the ranks."""
    if not active():
        return tensor
    return _collective(dist.all_reduce, tensor, what)


def broadcast_(tensor: torch.Tensor, src: int = 0, what: str = "a broadcast") -> torch.Tensor:
    """In place: rank ``src``'s values on every rank."""
    if not active():
        return tensor
    return _collective(dist.broadcast, tensor, what, src)


def _leaves(x, out: list):
    if isinstance(x, dict):
        for k in sorted(x, key=str):
            _leaves(x[k], out)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _leaves(v, out)
    else:
        out.append(x)


def _rebuild(x, it):
    if isinstance(x, dict):
        values = {k: _rebuild(x[k], it) for k in sorted(x, key=str)}
        return {k: values[k] for k in x}
    if isinstance(x, (list, tuple)):
        return type(x)(_rebuild(v, it) for v in x)
    value = next(it)
    if isinstance(x, torch.Tensor):
        return value.reshape(x.shape).to(x.dtype)
    if isinstance(x, bool):
        return bool(value)
    if isinstance(x, int):
        return int(round(float(value)))
    return float(value)


def all_reduce(x, op: str = "sum", what: str = "an all-reduce"):
    """Sum (``op="sum"``) or mean (``"mean"``) over the ranks of a tensor, a
    number, or a (nested) dict/list of them, in one float64 collective.
    Returns the same structure (tensors keep their dtype and device); dicts
    must have the same keys on every rank."""
    if op not in ("sum", "mean"):
        raise ValueError(f"op must be 'sum' or 'mean', not {op!r}")
    if not active():
        return x
    leaves: list = []
    _leaves(x, leaves)
    if not leaves:
        return x
    parts = [
        v.detach().reshape(-1).to(torch.float64) if isinstance(v, torch.Tensor) else torch.tensor([float(v)], dtype=torch.float64)
        for v in leaves
    ]
    sizes = [p.numel() for p in parts]
    flat = torch.cat([p.to(_backend_device()) for p in parts])
    all_reduce_(flat, what)
    if op == "mean":
        flat /= world_size()
    chunks = list(flat.split(sizes))
    out = []
    for leaf, chunk in zip(leaves, chunks):
        out.append(chunk.to(leaf.device) if isinstance(leaf, torch.Tensor) else chunk)
    return _rebuild(x, iter(out))


def all_reduce_mean(x, what: str = "an all-reduce"):
    return all_reduce(x, "mean", what)


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, in place, one
    collective per (dtype, device). A parameter without a gradient counts as
    zeros; it keeps ``grad=None`` only if no rank had one."""
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    all_reduce_(has, "the gradient all-reduce")
    groups: dict = {}
    for i, p in enumerate(params):
        if has[i] > 0:
            groups.setdefault((p.dtype, p.device), []).append(p)
    for group in groups.values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
        all_reduce_(flat, "the gradient all-reduce")
        for p, chunk in zip(group, flat.split([p.numel() for p in group])):
            if p.grad is None:
                p.grad = chunk.view_as(p).clone()
            else:
                p.grad.copy_(chunk.view_as(p))


def broadcast_object(obj, src: int = 0, what: str = "a broadcast"):
    """Rank ``src``'s picklable object on every rank."""
    if not active():
        return obj
    box = [obj]
    with guard(what):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj, what: str = "an all-gather") -> list:
    """Every rank's picklable object, in rank order."""
    if not active():
        return [obj]
    out = [None] * world_size()
    with guard(what):
        dist.all_gather_object(out, obj)
    return out


def all_gather_rows(tensor: torch.Tensor, what: str = "an all-gather") -> torch.Tensor:
    """Every rank's rows (first dimension, any count), concatenated in rank order."""
    if not active():
        return tensor
    dev = _backend_device()
    n = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=dev)
    counts = [torch.zeros_like(n) for _ in range(world_size())]
    with guard(what):
        dist.all_gather(counts, n)
    counts = [int(c) for c in counts]
    padded = torch.zeros((max(counts), *tensor.shape[1:]), dtype=tensor.dtype, device=dev)
    padded[: tensor.shape[0]] = tensor.to(dev)
    gathered = [torch.empty_like(padded) for _ in counts]
    with guard(what):
        dist.all_gather(gathered, padded)
    return torch.cat([g[:c] for g, c in zip(gathered, counts)]).to(tensor.device)


def barrier(what: str = "a barrier") -> None:
    if active():
        all_reduce_(torch.zeros(1), what)


# Models, masks, agreement ------------------------------------------------------------------


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Rank ``src``'s parameters and buffers on every rank."""
    if not active():
        return
    for _, p in module.named_parameters():
        broadcast_(p.detach(), src, "broadcasting the model")
    for _, b in module.named_buffers():
        broadcast_(b, src, "broadcasting the model")


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Average every float buffer (BatchNorm running statistics) over the
    ranks; the engine's masks are left alone (they already agree)."""
    if not active():
        return
    named = {name: b for name, b in module.named_buffers() if b.is_floating_point() and not name.endswith(MASK_F)}
    if not named:
        return
    mean = all_reduce_mean(named, "averaging the buffers")
    for name, b in named.items():
        b.copy_(mean[name])


def shard(index: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a batch's sample indices (sizes differ
    by at most one; a rank's part is empty when the batch has fewer samples
    than ranks)."""
    w = world_size()
    return index if w == 1 else index.tensor_split(w)[rank()]


def shard_size(n: int, w: int | None = None, r: int | None = None) -> int:
    """How many of ``n`` samples :func:`shard` gives rank ``r`` of ``w``."""
    w = world_size() if w is None else w
    r = rank() if r is None else r
    return n // w + (1 if r < n % w else 0)


def hash_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 of names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for name, t in named:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def mask_hash(engine) -> str:
    """Hash of every mask of a :class:`~chsnn.sparse.SparseEngine`, in layer order."""
    if not engine.sparse:
        return hash_tensors([])
    return hash_tensors((t.name, getattr(t.module, MASK)) for t in engine.targets)


def parameter_hash(module: torch.nn.Module) -> str:
    return hash_tensors(module.named_parameters())


def ranks_agree(engine, module: torch.nn.Module | None = None) -> bool:
    """True iff every rank holds the same masks (and, given ``module``, the
    same parameters): each rank's hashes, all-gathered, compared."""
    mine = (mask_hash(engine), parameter_hash(module) if module is not None else "")
    hashes = all_gather_object(mine, "comparing the ranks' masks and weights")
    return all(h == hashes[0] for h in hashes)


# The engine's hooks ----------------------------------------------------------------


class DistributedSync(EngineSync):
    """:class:`~chsnn.sparse.engine.EngineSync` over the process group:
    statistics reduced over the ranks before each decision, rank ``src``'s
    outcome broadcast after it (see the module docstring). ``weight`` is this
    rank's share of the current global batch (the training loop sets it each
    step); Hebb's activations are averaged with it."""

    def __init__(self, src: int = 0):
        self.src = src
        self.weight = 1.0 / world_size()

    def reduce_activity(self, stats: dict, generator: torch.Generator) -> None:
        if not active() or not stats:
            return
        parts = []
        for s in stats.values():
            dev = s.abs_sum.device if s.abs_sum is not None else generator.device
            zero = torch.zeros(s.n_in, dtype=torch.float64, device=dev)
            part = {"abs": s.abs_sum if s.abs_sum is not None else zero, "sq": s.sq_sum if s.sq_sum is not None else zero, "n": float(s.n)}
            if s.correlate:  # the correlation's running sums add up over the ranks
                part["sum"] = s.sum if s.sum is not None else zero
                part["cross"] = s.cross if s.cross is not None else torch.zeros(s.n_in, s.n_in, dtype=torch.float64, device=dev)
                part["n_samples"] = float(s.n_samples)
            parts.append(part)
        total = all_reduce(parts, what="reducing the calibration statistics")
        for s, t in zip(stats.values(), total):
            s.abs_sum, s.sq_sum, s.n = t["abs"].to(torch.float64), t["sq"].to(torch.float64), int(t["n"])
            if s.correlate:
                s.sum, s.cross, s.n_samples = t["sum"].to(torch.float64), t["cross"].to(torch.float64), int(t["n_samples"])

    def reduce_counts(self, counts: list[int]) -> list[int]:
        if not active():
            return counts
        total = all_reduce([float(c) for c in counts], what="counting the calibration samples")
        return [int(round(c)) for c in total]

    def reduce_hebb(self, rule) -> None:
        if not active():
            return
        w = float(self.weight)
        parts = []
        for t in rule.targets:
            pre, out = rule.pre.get(t.name), rule.out.get(t.name)
            here = w > 0 and pre is not None and out is not None
            dev = t.weight.device
            parts.append(
                {
                    "pre": pre * w if here else torch.zeros(t.n_in, dtype=torch.float64, device=dev),
                    "out": out * w if here else torch.zeros(t.n_out, dtype=torch.float64, device=dev),
                    "w": w if here else 0.0,
                }
            )
        total = all_reduce(parts, what="reducing the Hebb activations")
        for t, r in zip(rule.targets, total):
            if r["w"] > 0:
                rule.pre[t.name], rule.out[t.name] = r["pre"] / r["w"], r["out"] / r["w"]
            else:
                rule.pre.pop(t.name, None)
                rule.out.pop(t.name, None)

    def reduce_gradients(self, accumulated: dict) -> None:
        if not active() or not accumulated:
            return
        total = all_reduce(dict(accumulated), what="reducing RigL's dense gradients")
        for name, acc in accumulated.items():
            acc.copy_(total[name])

    @torch.no_grad()
    def agree(self, engine, targets) -> None:
        if not active():
            return
        what = "broadcasting the topology"
        for t in targets:
            if engine.sparse:
                mask = getattr(t.module, MASK)
                broadcast_(mask, self.src, what)
                getattr(t.module, MASK_F).copy_(mask)
            broadcast_(t.weight.detach(), self.src, what)
            if engine.optimizer is not None:
                state = engine.optimizer.state.get(t.weight, {})
                for key in sorted(state, key=str):
                    value = state[key]
                    if isinstance(value, torch.Tensor) and value.shape == t.weight.shape:
                        broadcast_(value, self.src, what)
        rng = engine.generator.get_state()
        broadcast_(rng, self.src, what)
        engine.generator.set_state(rng)
        engine.frozen = set(broadcast_object(sorted(engine.frozen), self.src, what))
