r"""Classical baselines beside the project's transformer classifiers, on the project's splits.

  python benchmarks/classifier_baselines.py [--workdir=runs/baselines] [--only=digits|bible]
                                            [--skip_transformers]

digits (8x8, train/validation/test 1,258/269/270): scikit-learn `SVC()` (defaults) and
`LogisticRegression` on the flattened uint8 pixels as the builder stores them (0..255),
fitted on train; then the ViT of experiments/vit_digits.py.
bible (Old vs New Testament verses): logistic regression on binary word unigrams and
bigrams seen in training, its C chosen on validation; then the text classifier of
experiments/textcls_bible.py.

Data come from the project's own loaders (`data.images.digits`, `data.texts`) with each
experiment's data config, so the splits are the ones the transformers see. Each
transformer trains through `ml_transformer.main.run` in WORKDIR/<experiment>, emptied
first; its validation accuracy is the final step's evaluation in metrics.jsonl, its test
accuracy eval/test-<step>.json. Wall seconds: scikit-learn rows, fitting and scoring (the
bigram row: every C); transformer rows, training plus the final test evaluation
(compilation and tokenizer training included).
"""

import importlib.util
import json
import os
import shutil
import time

import numpy as np
from absl import app, flags
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from ml_transformer import main as runner
from ml_transformer.data import bible, images, texts

flags.DEFINE_string("workdir", "runs/baselines", "Folder for the transformer runs (one subfolder each).")
flags.DEFINE_enum("only", None, ["digits", "bible"], "One dataset only (default: both).")
flags.DEFINE_bool("skip_transformers", False, "Only the scikit-learn rows.")
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = {"digits": "vit_digits", "bible": "textcls_bible"}


def experiment_config(name: str):
    """`get_config()` of experiments/<name>.py."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


# ---------------------------------------------------------------- scikit-learn
def digits_splits(config) -> dict:
    """split → (pixels uint8 [N, 64], labels [N]) from the project's digits data."""
    data = images.digits(config, workdir="")
    splits = {}
    for name in ("train", "validation", "test"):
        split = data.split(name)
        assert split.images.dtype == np.uint8, split.images.dtype
        splits[name] = (split.images.reshape(len(split), -1), split.labels)
    return splits


def fit_and_score(model, splits: dict) -> tuple[float, float]:
    """(validation, test) accuracy of `model` fitted on train."""
    model.fit(*splits["train"])
    return model.score(*splits["validation"]), model.score(*splits["test"])


def bible_splits(config) -> dict:
    """split → (verses, labels: 0 Old Testament, 1 New) from the project's Bible data."""
    read = texts.bible_testament_reader(bible.prepare(texts.BIBLE_PAIR, config.data.data_dir or None))
    return {split: read(split) for split in texts.SPLITS}


def bag_of_bigrams(splits: dict, cs=(0.1, 0.3, 1.0, 3.0, 10.0)) -> tuple[float, float, float]:
    """(chosen C, its validation accuracy, its test accuracy): logistic regression on binary
    unigram + bigram presence, C chosen on validation."""
    vectorizer = CountVectorizer(ngram_range=(1, 2), binary=True)
    train = vectorizer.fit_transform(splits["train"][0])
    features = {s: vectorizer.transform(splits[s][0]) for s in ("validation", "test")}
    models, validation = {}, {}
    for c in cs:
        models[c] = LogisticRegression(C=c, max_iter=2000).fit(train, splits["train"][1])
        validation[c] = models[c].score(features["validation"], splits["validation"][1])
    best = max(cs, key=validation.get)
    return best, validation[best], models[best].score(features["test"], splits["test"][1])


def sklearn_rows(dataset: str, config) -> list[tuple]:
    """(dataset, model, validation accuracy, test accuracy, wall seconds) rows."""
    if dataset == "digits":
        splits = digits_splits(config)
        logreg = LogisticRegression(max_iter=20000)
        (svc_val, svc_test), svc_s = timed(fit_and_score, SVC(), splits)
        (lr_val, lr_test), lr_s = timed(fit_and_score, logreg, splits)
        assert logreg.n_iter_.max() < logreg.max_iter, "LogisticRegression did not converge"
        return [(dataset, "SVC() on pixels", svc_val, svc_test, svc_s),
                (dataset, "LogisticRegression on pixels", lr_val, lr_test, lr_s)]
    (c, val, test), seconds = timed(bag_of_bigrams, bible_splits(config))
    return [(dataset, f"bag-of-bigrams LogisticRegression (C={c:g})", val, test, seconds)]


# ---------------------------------------------------------------- transformers
def transformer_row(dataset: str, experiment: str, config, workdir: str) -> tuple:
    """Trains the experiment from scratch in `workdir`; its table row."""
    if os.path.exists(workdir):
        shutil.rmtree(workdir)
    _, seconds = timed(runner.run, config, workdir, "train")
    step = config.total_steps
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    validation = next(r["eval/accuracy"] for r in reversed(records) if r["step"] == step and "eval/accuracy" in r)
    with open(os.path.join(workdir, "eval", f"test-{step}.json"), encoding="utf-8") as f:
        test = json.load(f)["accuracy"]
    return dataset, f"{experiment}.py ({config.model.name}, {step} steps)", validation, test, seconds


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    rows = []
    for dataset in [FLAGS.only] if FLAGS.only else list(EXPERIMENTS):
        experiment = EXPERIMENTS[dataset]
        config = experiment_config(experiment)
        rows += sklearn_rows(dataset, config)
        if not FLAGS.skip_transformers:
            rows.append(transformer_row(dataset, experiment, config, os.path.join(FLAGS.workdir, experiment)))

    header = ("dataset", "model", "validation acc", "test acc", "wall s")
    cells = [header] + [(d, m, f"{v:.4f}", f"{t:.4f}", f"{s:.1f}") for d, m, v, t, s in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print()
    for n, row in enumerate(cells):
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    app.run(main)
