"""Evaluation metrics and the files evaluation writes.

`DIR/eval/<split>-<name>.json` holds the metrics of a checkpoint (its name is its step,
or e.g. `avg5-2400` for an average); sequence tasks add `DIR/eval/<split>-<name>.tsv`
with columns source, reference, hypothesis. `--checkpoint=all` adds
`DIR/eval/<split>-all.md`, a table with a row per checkpoint.
"""

from __future__ import annotations

import csv
import os

import sacrebleu

from ml_transformer.workdir import save_json


def bleu(hypotheses: list[str], references: list[str], tokenize: str = "13a") -> float:
    """Corpus BLEU (sacrebleu) of detokenized hypotheses against one reference each."""
    return sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score


def write_eval(workdir: str, split: str, name: str, step: int, metrics: dict,
               rows: list[tuple[str, str, str]] | None) -> str:
    """Writes the metrics JSON (and the TSV of (source, reference, hypothesis) rows) of
    checkpoint `name`; returns the files' path without extension."""
    stem = os.path.join(workdir, "eval", f"{split}-{name}")
    save_json(stem + ".json", {"step": step, "split": split, "checkpoint": name, **metrics})
    if rows is not None:
        tmp = stem + ".tsv.tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            writer.writerow(["source", "reference", "hypothesis"])
            writer.writerows(rows)
        os.replace(tmp, stem + ".tsv")
    return stem


def write_table(workdir: str, split: str, results: dict[str, dict]) -> str:
    """Writes `{checkpoint: metrics}` as a markdown table `eval/<split>-all.md`; returns its path."""
    columns = list(dict.fromkeys(k for metrics in results.values() for k in metrics))
    rows = [[name, *(m.get(k, "") for k in columns)] for name, m in results.items()]
    path = os.path.join(workdir, "eval", f"{split}-all.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(markdown_table(["checkpoint", *columns], rows))
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table, floats to 4 significant digits."""
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
