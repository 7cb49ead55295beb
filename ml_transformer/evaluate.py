"""Evaluation metrics and the files evaluation writes.

`DIR/eval/<result name>.json` holds the metrics of a checkpoint on a split, the name
saying which (`result_name`: split, checkpoint, its step or e.g. `avg5-2400` for an
average, and the decoding settings); sequence tasks add `DIR/eval/<result name>.tsv` with
columns source, reference, hypothesis. `--checkpoint=all` adds `DIR/eval/<split>-all...md`,
a table with a row per checkpoint.
"""

from __future__ import annotations

import csv
import os

import sacrebleu

from ml_transformer.workdir import WorkdirError, save_json


def bleu(hypotheses: list[str], references: list[str], tokenize: str = "13a") -> float:
    """Corpus BLEU (sacrebleu) of detokenized hypotheses against one reference each."""
    return sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score


def result_name(config, split: str, checkpoint: str) -> str:
    """The name of an evaluation's files: `<split>-<checkpoint>`, and for tasks that decode,
    every decoding setting that changes the outputs (`test-3600-greedy-max+50-min1`,
    `test-3600-beam4-alpha0.6-max+50-min1-first64`; `beam4-tuned` when the length penalty
    is chosen on validation data), so that evaluations with other settings are kept beside it."""
    name = f"{split}-{checkpoint}"
    decode = config.get("decode")
    if decode is None or "beam_size" not in decode:
        return name
    name += f"-{search_name(decode.beam_size, decode.alpha)}-max+{decode.extra_len}-min{decode.min_len}"
    return name + (f"-first{decode.final_examples}" if decode.final_examples else "")


def search_name(beam_size: int, alpha: float | None) -> str:
    """`greedy`, `beam4-alpha0.6`, or `beam4-tuned` for a length penalty left to validation data."""
    if beam_size == 1:
        return "greedy"
    return f"beam{beam_size}-" + ("tuned" if alpha is None else f"alpha{alpha:g}")


def write_eval(workdir: str, name: str, step: int, split: str, checkpoint: str, metrics: dict,
               rows: list[tuple[str, ...]] | None, columns: tuple[str, ...] = ("source", "reference", "hypothesis")
               ) -> str:
    """Writes `eval/<name>.json` (the metrics of checkpoint `checkpoint` on `split`) and,
    given rows (e.g. of source, reference, hypothesis: `columns`), `eval/<name>.tsv`;
    returns their path without extension. WorkdirError naming the file if it cannot be
    written."""
    stem = os.path.join(workdir, "eval", name)
    try:
        save_json(stem + ".json", {"step": step, "split": split, "checkpoint": checkpoint, **metrics})
        if rows is not None:
            tmp = stem + ".tsv.tmp"
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
                writer.writerow(columns)
                writer.writerows(rows)
            os.replace(tmp, stem + ".tsv")
    except OSError as e:
        raise WorkdirError(f"cannot write the results to {stem}.json/.tsv: {e.strerror}") from None
    return stem


def write_table(workdir: str, name: str, results: dict[str, dict]) -> str:
    """Writes `{checkpoint: metrics}` as a markdown table `eval/<name>.md`; returns its path."""
    columns = list(dict.fromkeys(k for metrics in results.values() for k in metrics))
    rows = [[checkpoint, *(m.get(k, "") for k in columns)] for checkpoint, m in results.items()]
    path = os.path.join(workdir, "eval", f"{name}.md")
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(markdown_table(["checkpoint", *columns], rows))
    except OSError as e:
        raise WorkdirError(f"cannot write {path}: {e.strerror}") from None
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table, floats to 4 significant digits."""
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
