"""The settings every experiment file shares, so that each states only what is its own.

    c = run_settings.run("classification", total_steps=800, batch_size=64, best_metric="accuracy")
    c.optimizer = run_settings.optimizer(learning_rate=1e-3, schedule="cosine", warmup_steps=100)
    if "smoke" in args:
        run_settings.smoke(c)
"""

from __future__ import annotations

import ml_collections


def arguments(arg: str | None, file: str, known: tuple[str, ...] = ("smoke",)) -> list[str]:
    """The comma-separated arguments of `--config=FILE:ARG`; ValueError naming unknown ones."""
    args = [a for a in (arg or "").split(",") if a]
    unknown = [a for a in args if a not in known]
    if unknown:
        raise ValueError(f"{file}: unknown argument(s) {unknown}; known: {', '.join(known)}")
    return args


def run(task: str, *, total_steps: int, batch_size: int, best_metric: str, log_every_steps: int = 100,
        eval_every_steps: int = 500, checkpoint_every_steps: int = 1000, keep_checkpoints: int = 2
        ) -> ml_collections.ConfigDict:
    """A config's run fields: the task, steps, batch size, evaluation, checkpoints, mesh."""
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0
    c.total_steps = total_steps
    c.batch_size = batch_size  # examples per batch (sequences per evaluation batch with data.batch_tokens)
    c.log_every_steps = log_every_steps
    c.eval_every_steps = eval_every_steps
    c.checkpoint_every_steps = checkpoint_every_steps
    c.keep_checkpoints = keep_checkpoints  # the rolling set; the best checkpoint is kept apart
    c.best_metric = best_metric  # validation metric that picks --checkpoint=best
    c.final_split = "test"  # evaluated in full when training ends
    c.micro_batches = 1  # gradient accumulation: each batch in this many slices, one at a time
    c.init_from = ""  # 'hf:PATH': start from a Hugging Face checkpoint's weights, architecture and tokenizer
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # devices along the data-parallel axis; -1 = all remaining
    c.mesh.fsdp = 1  # devices that parameters and optimizer state are sharded over
    return c


def optimizer(*, learning_rate: float, schedule: str, warmup_steps: int, name: str = "adam", b1: float = 0.9,
              b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, label_smoothing: float = 0.0,
              grad_clip_norm: float = 1.0) -> ml_collections.ConfigDict:
    """`config.optimizer`: Adam(W), its schedule ("cosine": linear warmup then cosine decay
    to 0; "transformer": the paper's, `learning_rate` scaling it), loss smoothing, clipping."""
    return ml_collections.ConfigDict(dict(
        name=name, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, schedule=schedule,
        learning_rate=learning_rate, warmup_steps=warmup_steps, label_smoothing=label_smoothing,
        grad_clip_norm=grad_clip_norm))


def smoke(c: ml_collections.ConfigDict, *, total_steps: int = 30, warmup_steps: int = 5) -> None:
    """Turns `c` into its `smoke` run: a few dozen steps, logged, evaluated and saved twice."""
    c.total_steps = total_steps
    c.log_every_steps = total_steps // 3
    c.eval_every_steps = c.checkpoint_every_steps = total_steps // 2
    c.optimizer.warmup_steps = warmup_steps
