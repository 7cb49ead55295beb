"""Evaluation metrics and the files evaluation writes.

`DIR/eval/<split>-<step>.json` holds the metrics; sequence tasks add
`DIR/eval/<split>-<step>.tsv` with columns source, reference, hypothesis.
"""

from __future__ import annotations

import csv
import os

import sacrebleu

from ml_transformer.workdir import save_json


def bleu(hypotheses: list[str], references: list[str], tokenize: str = "13a") -> float:
    """Corpus BLEU (sacrebleu) of detokenized hypotheses against one reference each."""
    return sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score


def write_eval(workdir: str, split: str, step: int, metrics: dict, rows: list[tuple[str, str, str]] | None):
    """Writes the metrics JSON (and the TSV of (source, reference, hypothesis) rows)."""
    stem = os.path.join(workdir, "eval", f"{split}-{step}")
    save_json(stem + ".json", {"step": step, "split": split, **metrics})
    if rows is not None:
        tmp = stem + ".tsv.tmp"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
            writer.writerow(["source", "reference", "hypothesis"])
            writer.writerows(rows)
        os.replace(tmp, stem + ".tsv")
    return stem
