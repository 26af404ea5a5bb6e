"""The trainer: :class:`Runner` builds a run from a resolved config (data,
model, optimizer, LR schedule, calibrated sparse engine), trains it
(:meth:`Runner.fit`), evaluates it, and saves and restores its state.

In a multi-process run (torchrun, :mod:`chsnn.distributed`) ``batch_size``
and ``eval_batch_size`` are global (split over the ranks), so a run has the
same steps, schedules and topology updates on any number of ranks; only rank
0 writes the run directory. ``precision`` (fp32, bf16, fp16) runs the forward
passes under ``torch.autocast``; the engine's statistics and link scores stay
fp32/float64.

A little over 500 lines because :class:`Runner` is one class: its loop,
checkpoints and evaluation share the run's state (model, engine, optimizer,
scaler, RNG streams), and split over modules they would hand that state
around as free functions did before.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from chsnn import distributed
from chsnn.config import pick_device
from chsnn.contracts import FiringRateProbes, firing_rates
from chsnn.optim import check_precision, make_lr_scheduler, make_optimizer
from chsnn.rundir import SUMMARY, TENSORBOARD, RunDir
from chsnn.sparse import ConfigError, EngineConfig, SparseEngine

CALIBRATION_BYTES = 1 << 30  # calibration inputs kept on the device, unless calibration_batches is set


class TrainingDiverged(RuntimeError):
    """A non-finite loss or weight: the run stops; its last good checkpoint
    stays as it was and no summary.json is written."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the state was saved and said so."""


@dataclass
class Progress:
    """Where the training loop is; a checkpoint records it and a resumed run starts from it."""

    epoch: int = 0  # the epoch in progress (0-based) = epochs finished
    done_in_epoch: int = 0  # batches done of the epoch in progress
    skip: int = 0  # batches of the first epoch done before a resume
    step: int = 0  # optimizer steps done
    best: float = -1.0  # best test accuracy so far
    history: list = field(default_factory=list)  # metrics rows of the finished epochs
    wall_before: float = 0.0  # seconds trained before a resume
    resumed_sums: dict | None = None  # the train sums of an epoch cut short, until its rest is trained
    loss_sum: float = 0.0  # train loss, correct and seen of the epoch in progress
    correct: int = 0
    seen: int = 0
    records_start: int = 0  # the engine's topology-update records before this epoch
    stopped: bool = False  # max_steps reached
    last_saved: int | None = None  # the step latest.pt holds
    predictions: tuple | None = None  # (labels, predicted classes) of the last evaluation, for predictions.npz

    def epoch_sums(self) -> dict:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "seen": int(self.seen), "records_start": self.records_start}


class Runner:
    """Everything a run needs, built from a resolved config."""

    def __init__(self, cfg: dict):
        from chsnn.data import encode, load_dataset
        from chsnn.models import build_model

        self.cfg = cfg
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.device = pick_device(cfg["device"], distributed.env_local_rank() if self.world > 1 else None)
        self.precision = cfg.get("precision", "fp32")
        check_precision(self.precision, self.device)
        if self.world > 1 and cfg["batch_size"] < self.world:
            raise ConfigError(
                f"batch_size {cfg['batch_size']} is the global batch, split over {self.world} ranks: it must be at least {self.world}"
            )
        torch.manual_seed(cfg["seed"])
        data_options = dict(cfg["data_options"])
        data_options.setdefault("seed", cfg["seed"])
        data_options.setdefault("time_steps", cfg["time_steps"])
        self.data = load_dataset(cfg["data"], **data_options)
        self._encode = encode
        self.model = build_model(
            cfg["model"], self.data.input_shape, self.data.n_classes, time_steps=cfg["time_steps"], **cfg["model_options"]
        ).to(self.device)
        distributed.broadcast_module(self.model)  # every rank starts from rank 0's model
        self.spiking = bool(getattr(self.model, "spiking", False))
        self.steps_per_epoch = math.ceil(len(self.data.train) / cfg["batch_size"])
        # Schedules span the configured epochs; max_steps only stops early.
        self.total_steps = self.steps_per_epoch * cfg["epochs"]
        self.optimizer = make_optimizer(cfg, self.model, self.device)
        self.scheduler = make_lr_scheduler(cfg, self.optimizer, self.total_steps)
        self.scaler = self.grad_scaler()
        # Each rank its own encoding noise (rank 0's is the single-process stream).
        self.encode_gen = torch.Generator(device="cpu").manual_seed(cfg["seed"] + 1 + 1000003 * self.rank)
        engine_cfg = self._engine_options()
        # Each rank calibrates on its part of the first batches; the engine's
        # sync hooks reduce the statistics over the ranks.
        batches = self.batches(
            self.data.train, cfg["batch_size"], epoch=-1, limit=engine_cfg["calibration_batches"], shard=True, shuffle=True
        )
        calibration = [self.prepare(x) for x, y in batches if y.numel()]
        self.sync = distributed.DistributedSync() if self.world > 1 else None
        self.engine = SparseEngine(
            self.model,
            self.optimizer,
            engine_cfg,
            calibration=calibration,
            forward_fn=lambda m, x: m(x),
            row_groups=getattr(self.model, "head_groups", None),
            sync=self.sync,
        )
        if self.rank > 0:  # dropout and other noise: each rank its own (rank 0 keeps the single-process stream)
            torch.manual_seed(cfg["seed"] + 7919 * self.rank)
        # The engine's own schedule decides updates; the LR schedule steps per optimizer step.
        if self.scheduler is not None:
            self.optimizer.register_step_post_hook(lambda opt, args, kwargs: self.scheduler.step())

    # Building

    def _engine_options(self) -> dict:
        cfg = self.cfg
        # The model's own defaults (e.g. Spikformer: only its linear layers, chains
        # inside each MLP) sit under the config's engine options.
        engine_cfg = {**getattr(self.model, "default_engine_options", {}), **cfg["engine"]}
        engine_cfg.setdefault("seed", cfg["seed"])
        engine_cfg.setdefault("total_steps", self.total_steps)
        engine_cfg.setdefault("update_interval", self.default_update_interval(engine_cfg))
        engine_cfg["calibration_batches"] = self.calibration_batch_count(engine_cfg)
        return engine_cfg

    def calibration_batch_count(self, engine_cfg: dict) -> int:
        """One number of calibration batches: engine.calibration_batches, if
        set, wins; then the config's; unset, the batches holding the first
        calibration_samples samples of the training set."""
        cfg = self.cfg
        n = engine_cfg.get("calibration_batches") or cfg["calibration_batches"]
        if n is not None:
            return n
        bound = engine_cfg.get("calibration_samples", EngineConfig.calibration_samples)
        # The batches stay on the device for the whole run: at most CALIBRATION_BYTES
        # of inputs (DVS frames, 2x128x128 over 16 steps, are 2 MB a sample).
        per_sample = 4 * math.prod(self.data.input_shape) * (cfg["time_steps"] if self.spiking else 1)
        bound = min(bound, max(cfg["batch_size"], CALIBRATION_BYTES // per_sample))
        return max(1, math.ceil(min(len(self.data.train), bound) / cfg["batch_size"]))

    def default_update_interval(self, engine_cfg: dict) -> int:
        """Steps between topology updates: ``updates_per_epoch`` a epoch, but
        at least ``min_update_steps`` apart so a new link can learn before it
        is judged; never so far apart that fewer than 4 updates fit before
        the topology stops changing."""
        cfg = self.cfg
        per_epoch = max(1, self.steps_per_epoch // cfg["updates_per_epoch"])
        end = engine_cfg.get("end_step") or round(engine_cfg.get("end_fraction", EngineConfig.end_fraction) * self.total_steps)
        return max(1, min(max(per_epoch, cfg["min_update_steps"]), max(per_epoch, end // 4)))

    def autocast(self):
        """The context the forward passes run in: torch.autocast for bf16 and
        fp16 (the weights, gradients, optimizer and engine stay fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def grad_scaler(self):
        """A GradScaler for fp16, else None."""
        return torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    # Data

    def batches(self, dataset, batch_size, epoch: int, limit: int | None = None, skip: int = 0, shard: bool = False, shuffle: bool = False):
        """Batches in an order fixed by (seed, epoch): resuming mid-epoch
        replays the same order and skips what was done. ``epoch=-1``: in
        order (evaluation), or shuffled with ``shuffle`` (calibration: data
        sets are stored by class). With ``shard``, this rank's part of each
        (global) batch, possibly empty."""
        loader_gen = torch.Generator().manual_seed(self.cfg["seed"] * 1000003 + epoch)
        order = torch.randperm(len(dataset), generator=loader_gen) if epoch >= 0 or shuffle else torch.arange(len(dataset))
        n_batches = math.ceil(len(dataset) / batch_size)
        whole = dataset.tensors() if hasattr(dataset, "tensors") else None  # in-memory sets: slice at once
        for b in range(skip, n_batches if limit is None else min(limit, n_batches)):
            idx = order[b * batch_size : (b + 1) * batch_size]
            if shard:
                idx = distributed.shard(idx)
            if whole is not None:
                yield whole[0][idx], whole[1][idx]
                continue
            items = [dataset[int(i)] for i in (idx if idx.numel() else order[:1])]
            x = torch.stack([torch.as_tensor(it[0]) for it in items])
            y = torch.as_tensor([int(it[1]) for it in items])
            yield (x, y) if idx.numel() else (x[:0], y[:0])

    @staticmethod
    def global_batch_size(n: int, batch_size: int, b: int) -> int:
        """Samples in batch ``b`` of a data set of ``n``."""
        return max(0, min(batch_size, n - b * batch_size))

    def shard_samples(self, n: int, batch_size: int) -> int:
        """Samples of a data set of ``n`` that this rank sees in one pass."""
        if self.world == 1:
            return n
        return sum(distributed.shard_size(self.global_batch_size(n, batch_size, b)) for b in range(math.ceil(n / batch_size)))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Model input: (T, N, ...) for spiking models (event frames moved to
        time-major; static images through the encoder), (N, ...) otherwise."""
        if self.spiking and not self.data.time_steps:  # encoded on the CPU (its generator's device), then moved once
            T = self.cfg["time_steps"]
            gen = self.encode_gen if self.cfg["encoder"] == "poisson" else None
            return self._encode(x.to("cpu", torch.float32), T, method=self.cfg["encoder"], generator=gen).to(self.device)
        x = x.to(self.device, torch.float32)
        if not self.spiking:
            return x.flatten(1, 2) if self.data.time_steps else x
        return x.transpose(0, 1)  # (N, T, ...) event frames

    # Evaluation

    @torch.no_grad()
    def evaluate(self, dataset=None, predictions: bool = False) -> dict:
        """Test accuracy and loss, firing rates, and the synaptic operations
        and energy per sample (CH-SPEC section 7), in one pass. In a
        multi-process run each rank scores its part of every batch and the
        sums are reduced over the ranks (every rank gets the same result).
        ``predictions``: also return each sample's label and predicted class
        in test-set order (``"predictions"``: two int64 tensors; in a
        multi-process run the ranks' parts are gathered and put back in order,
        on every rank)."""
        from chsnn.energy import account_energy

        dataset = dataset or self.data.test
        probes = FiringRateProbes(self.model)
        score = {"correct": 0, "total": 0, "loss": 0.0}
        labels, predicted = [], []

        def tally(batch, logits):
            y = batch[1].to(self.device)
            guess = logits.argmax(1)
            score["loss"] += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
            score["correct"] += int((guess == y).sum())
            score["total"] += y.numel()
            if predictions:
                labels.append(y.cpu())
                predicted.append(guess.cpu())

        batch_size = self.cfg["eval_batch_size"]
        local = self.shard_samples(len(dataset), batch_size)
        batches = ((self.prepare(x), y) for x, y in self.batches(dataset, batch_size, epoch=-1, shard=True) if y.numel())
        totals = dict.fromkeys(("sops", "macs", "energy_pj", "dense_sops", "dense_macs", "dense_energy_pj"), 0.0)
        try:
            if local or self.world == 1:  # a rank may hold no test sample when the test set has fewer than the ranks
                with self.autocast():
                    totals = account_energy(self.model, batches, on_output=tally)["totals"]
        finally:
            probes.remove()
        spikes = probes.counts
        if self.world > 1:
            reduced = distributed.all_reduce(
                {"score": score, "totals": {k: v * score["total"] for k, v in totals.items()}, "spikes": spikes},
                what="reducing the evaluation",
            )
            score, spikes = reduced["score"], reduced["spikes"]
            totals = {k: v / max(score["total"], 1) for k, v in reduced["totals"].items()}
        n = max(score["total"], 1)
        out = {
            "test_accuracy": score["correct"] / n,
            "test_loss": score["loss"] / n,
            "firing_rates": firing_rates(spikes),
            "macs_per_sample": totals["macs"],
            "energy_pj_per_sample": totals["energy_pj"],
            "dense_energy_pj_per_sample": totals["dense_energy_pj"],
        }
        if self.spiking:
            out["sops_per_sample"] = totals["sops"]
        if predictions:
            out["predictions"] = self._in_test_order(labels, predicted, len(dataset), batch_size)
        return out

    def _in_test_order(self, labels: list, predicted: list, n: int, batch_size: int) -> tuple:
        """(labels, predicted) of the whole evaluation in test-set order. One
        process scores the samples in order; several each score their
        contiguous part of every batch, so the parts are gathered with their
        sample indices and sorted back (one collective per evaluation)."""
        mine = torch.stack([torch.cat(labels), torch.cat(predicted)], 1).long() if labels else torch.zeros((0, 2), dtype=torch.long)
        if self.world > 1:
            starts = range(0, n, batch_size)
            index = [distributed.shard(torch.arange(start, min(n, start + batch_size))) for start in starts]
            index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long)
            if index.numel() != mine.shape[0]:  # the evaluation's batches and this reconstruction must agree
                raise RuntimeError(f"rank {self.rank} scored {mine.shape[0]} test samples but holds {index.numel()} indices")
            rows = distributed.all_gather_rows(torch.cat([index[:, None], mine], 1), what="gathering the test predictions")
            mine = rows[rows[:, 0].argsort()][:, 1:]
        return mine[:, 0], mine[:, 1]

    def non_finite(self) -> str | None:
        """The first parameter or floating buffer holding NaN or inf, else
        None (one host sync for the whole model)."""
        tensors = [(n, t) for n, t in [*self.model.named_parameters(), *self.model.named_buffers()] if t.is_floating_point() and t.numel()]
        if not tensors or bool(torch.stack([torch.isfinite(t).all() for _, t in tensors]).all()):
            return None
        return next(n for n, t in tensors if not bool(torch.isfinite(t).all()))

    # State

    def rng_state(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            "encode": self.encode_gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def checkpoint(
        self, epoch: int, step_in_epoch: int, best: float, history: list, rank_rngs: list | None = None, partial: dict | None = None
    ) -> dict:
        """The run's state (weights, masks, engine, optimizer, schedule, RNG);
        ``rank_rngs``: every rank's RNG state, for a multi-process run;
        ``partial``: the train loss/accuracy sums of the epoch in progress (so a
        resumed epoch's figures cover all of it). Tensors and plain data only:
        it loads with ``torch.load(weights_only=True)`` (:mod:`chsnn.checkpoint`)."""
        rng = self.rng_state()
        if rank_rngs is not None:
            rng["ranks"] = rank_rngs
        return {
            "config": self.cfg,
            "epoch": epoch,  # epochs finished
            "step_in_epoch": step_in_epoch,  # batches done of the epoch in progress
            "best_accuracy": best,
            "history": history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "engine": self.engine.state_dict(),
            "rng": rng,
            "world_size": self.world,
            "epoch_partial": partial,
        }

    def restore(self, ckpt: dict) -> None:
        """Load a :meth:`checkpoint` (weights, masks, engine, optimizer, schedule, RNG)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler and ckpt["scheduler"]:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.engine.load_state_dict(ckpt["engine"])
        self._restore_rng(ckpt["rng"])

    def _restore_rng(self, rng: dict) -> None:
        ranks = rng.get("ranks")
        if ranks is not None and len(ranks) == self.world:  # each rank its own streams
            rng = ranks[self.rank]
        elif self.rank > 0:  # another world size: rank 0's streams, told apart per rank
            rng = dict(rng, torch=None, encode=None, cuda=None)
            torch.manual_seed(self.cfg["seed"] + 7919 * self.rank + 104729 * self.engine.step_count)
            self.encode_gen.manual_seed(self.cfg["seed"] + 1 + 1000003 * self.rank + 104729 * self.engine.step_count)
        if rng.get("torch") is not None:
            torch.set_rng_state(rng["torch"])
        if rng.get("encode") is not None:
            self.encode_gen.set_state(rng["encode"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def progress(self, ckpt: dict | None = None) -> Progress:
        """Where training starts: the beginning, or where ``ckpt`` (already
        restored) left off."""
        p = Progress(step=self.engine.step_count, records_start=len(self.engine.records))
        if ckpt is not None:
            p.epoch, p.skip, p.best, p.history = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["best_accuracy"], ckpt["history"]
            p.done_in_epoch = p.skip
            p.wall_before = p.history[-1]["wall_seconds"] if p.history else 0.0
            p.resumed_sums = ckpt.get("epoch_partial") if p.skip else None
            p.last_saved = p.step
        max_steps = self.cfg["max_steps"]
        p.stopped = max_steps is not None and p.step >= max_steps
        return p

    # Training

    def fit(self, run: RunDir, ckpt: dict | None = None, quiet: bool = False, started: float | None = None) -> dict:
        """Train to the config's last epoch (or ``max_steps``), from the
        start or from ``ckpt``; rank 0 logs each epoch to ``run`` and saves
        latest.pt (and best.pt). Returns the summary (summary.json).

        A non-finite loss or weight raises :class:`TrainingDiverged`;
        Ctrl-C saves the state and raises :class:`RunInterrupted`.
        ``started``: when the run started (its wall time counts from there)."""
        from chsnn.summary import make_summary, summary_screen, tensorboard_writer

        started = time.time() if started is None else started
        if ckpt is not None:
            self.restore(ckpt)
        p = self.progress(ckpt)
        main = distributed.is_main()
        writer = tensorboard_writer(run.file(TENSORBOARD)) if main else None
        try:
            for epoch in range(p.epoch, self.cfg["epochs"]):
                if p.stopped:
                    break
                p.epoch = epoch
                self.train_epoch(p, quiet)
                row = self._finish_epoch(p, started)
                self._save_epoch(run, p, row, writer)
                p.best = max(p.best, row["test_accuracy"])
                if not quiet:
                    print(
                        f"epoch {epoch + 1}: loss {row['loss']:.4f}  train {row['train_accuracy']:.4f}  test {row['test_accuracy']:.4f}  "
                        f"sparsity {row['sparsity']:.4f}  updates {row['topology_updates']}",
                        file=sys.stderr,
                    )
        except TrainingDiverged as exc:
            latest = run.file("latest.pt")
            kept = (
                f"the last good checkpoint {latest} (step {p.last_saved}) is kept"
                if p.last_saved is not None
                else "no checkpoint was written"
            )
            raise TrainingDiverged(
                f"training diverged: {exc}; lr is {self.cfg['lr']} with {self.cfg['optimizer']}: lower it. "
                f"Stopped: {kept}, and no summary.json was written"
            ) from None
        except KeyboardInterrupt:
            if main:  # no collective here: the other ranks may be anywhere
                self._save_interrupted(run, p)
            raise RunInterrupted() from None
        finally:
            if writer is not None:
                writer.close()
        summary = make_summary(self, p.history, p.wall_before + time.time() - started)
        if main:
            if p.predictions is not None:  # the final evaluation's, for paired tests between runs (chsnn sweep)
                run.write_predictions(*(t.numpy() for t in p.predictions))
            run.write_text(SUMMARY, json.dumps(summary, indent=2))
        if not quiet:
            print(summary_screen(summary, run.path))
        return summary

    def train_epoch(self, p: Progress, quiet: bool = False) -> None:
        """Train the epoch ``p.epoch`` from batch ``p.skip`` to its end (or ``max_steps``)."""
        from tqdm import tqdm

        p.records_start = len(self.engine.records)
        p.loss_sum = p.correct = p.seen = 0
        if p.resumed_sums is not None:  # a resumed epoch: its figures cover the batches before the resume too
            p.records_start = p.resumed_sums.get("records_start", p.records_start)
            if self.rank == 0:  # the other ranks' sums were reduced into rank 0's
                p.loss_sum, p.correct, p.seen = p.resumed_sums["loss_sum"], p.resumed_sums["correct"], p.resumed_sums["seen"]
            p.resumed_sums = None
        bar = tqdm(total=self.steps_per_epoch, initial=p.skip, desc=f"epoch {p.epoch + 1}/{self.cfg['epochs']}", disable=quiet, leave=False)
        p.done_in_epoch = p.skip
        max_steps = self.cfg["max_steps"]
        for b, (x, y) in enumerate(
            self.batches(self.data.train, self.cfg["batch_size"], p.epoch, skip=p.skip, shard=self.world > 1), start=p.skip
        ):
            self.train_step(x, y, b, p)
            if not quiet:
                bar.set_postfix(
                    loss=f"{p.loss_sum / max(p.seen, 1):.3f}",
                    acc=f"{p.correct / max(p.seen, 1):.3f}",
                    density=f"{1 - self.engine.sparsity():.4f}",
                    refresh=False,
                )
                bar.update()
            if max_steps is not None and p.step >= max_steps:
                p.stopped = True
                break
        bar.close()
        p.skip = 0

    def train_step(self, x: torch.Tensor, y: torch.Tensor, b: int, p: Progress) -> None:
        """One optimizer step on batch ``b`` (this rank's part ``x``, ``y``),
        counted into ``p``. The engine masks, and updates the topology when
        due, in the optimizer's step hook."""
        multi = self.world > 1
        n_local = y.numel()
        share = n_local / self.global_batch_size(len(self.data.train), self.cfg["batch_size"], b) if multi else 1.0
        if self.sync is not None:
            self.sync.weight = share
        self.optimizer.zero_grad(set_to_none=True)
        if n_local:  # a rank with no sample of a short last batch only joins the all-reduce
            inputs, y = self.prepare(x), y.to(self.device)
            with self.autocast():
                logits = self.model(inputs)
                loss = nn.functional.cross_entropy(logits.float(), y)
            # Each rank's share of the global batch's mean loss; summing the gradients adds them up.
            scaled = loss * share if multi else loss
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
                self.engine.loss_scale = self.scaler._get_scale_async()  # RigL unscales what it accumulates (a tensor: no host sync)
            scaled.backward()
        if multi:
            distributed.all_reduce_grads(self.model.parameters())
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step (and the engine) on inf/nan gradients
            self.scaler.update()
        else:
            self.optimizer.step()  # the engine masks and updates after this
        p.done_in_epoch += 1
        p.step += 1
        if n_local:
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value) and not multi:  # several ranks: checked on the reduced sums
                raise TrainingDiverged(f"the training loss is {loss_value} at step {p.step} (epoch {p.epoch + 1})")
            p.loss_sum += loss_value * n_local
            p.correct += int((logits.argmax(1) == y).sum())
            p.seen += n_local

    def _finish_epoch(self, p: Progress, started: float) -> dict:
        """The epoch's metrics row (after reducing the ranks' sums and
        checking that nothing is non-finite), appended to ``p.history``."""
        engine = self.engine
        if self.world > 1:
            distributed.average_buffers(self.model)
            p.loss_sum, p.correct, p.seen = distributed.all_reduce(
                [float(p.loss_sum), int(p.correct), int(p.seen)], what="reducing the training metrics"
            )
        # Nothing non-finite is evaluated, logged or saved (every rank holds the same weights and sums).
        if not math.isfinite(p.loss_sum):
            raise TrainingDiverged(f"the training loss is {p.loss_sum / max(p.seen, 1)} over epoch {p.epoch + 1} (step {p.step})")
        bad = self.non_finite()
        if bad is not None:
            raise TrainingDiverged(f"{bad} holds NaN or infinite values after step {p.step} (epoch {p.epoch + 1})")
        evaluation = self.evaluate(predictions=True)
        p.predictions = evaluation.get("predictions")
        updates = engine.records[p.records_start :]
        row = {
            "epoch": p.epoch + 1,
            "step": p.step,
            "loss": p.loss_sum / max(p.seen, 1),
            "train_accuracy": p.correct / max(p.seen, 1),
            "test_accuracy": evaluation["test_accuracy"],
            "test_loss": evaluation["test_loss"],
            "sparsity": engine.sparsity(),
            "layers": [{k: s[k] for k in ("name", "density", "active_in", "active_out")} for s in engine.stats()],
            "percolation": engine.percolation(),
            "firing_rates": evaluation["firing_rates"],
            "topology_updates": len(updates),
            "topology_update_ms": [round(r["ms"], 2) for r in updates],
            "lr": self.optimizer.param_groups[0]["lr"],
            "wall_seconds": p.wall_before + time.time() - started,
        }
        for key in ("sops_per_sample", "macs_per_sample", "energy_pj_per_sample", "dense_energy_pj_per_sample"):
            if key in evaluation:
                row[key] = evaluation[key]
        p.history.append(row)
        return row

    def _save_epoch(self, run: RunDir, p: Progress, row: dict, writer) -> None:
        """Log the epoch's row and save latest.pt (and best.pt at a new best).
        Every rank calls it: a multi-process run gathers the RNG states first."""
        from chsnn.summary import log_tensorboard

        complete = not p.stopped or p.done_in_epoch == self.steps_per_epoch
        rank_rngs = distributed.all_gather_object(self.rng_state(), "gathering the RNG states") if self.world > 1 else None
        if not distributed.is_main():
            return
        run.append_metrics(row)
        log_tensorboard(writer, row)
        sums = None if complete else p.epoch_sums()
        ckpt = self.checkpoint(
            p.epoch + 1 if complete else p.epoch,
            0 if complete else p.done_in_epoch,
            max(p.best, row["test_accuracy"]),
            p.history,
            rank_rngs,
            sums,
        )
        run.save("latest.pt", ckpt)
        p.last_saved = p.step
        if row["test_accuracy"] > p.best:
            run.save("best.pt", ckpt)

    def _save_interrupted(self, run: RunDir, p: Progress) -> None:
        """Ctrl-C: save the state where it stopped (unless it is no longer finite) and say so."""
        latest = run.file("latest.pt")
        bad = self.non_finite()
        if bad is not None:
            print(f"\ninterrupted: state NOT saved ({bad} holds NaN or infinite values); {latest} is the last good state", file=sys.stderr)
            return
        sums = p.resumed_sums or (p.epoch_sums() if p.done_in_epoch else None)
        run.save("latest.pt", self.checkpoint(p.epoch, p.done_in_epoch, p.best, p.history, partial=sums))
        print(f"\ninterrupted: state saved to {latest}; continue with --resume --out {run.path}", file=sys.stderr)
