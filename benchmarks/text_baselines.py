"""Bag-of-bigrams logistic regression on a text classification dataset's splits.

  python benchmarks/text_baselines.py [--dataset=bible_testament|imdb_reviews] [--data_dir=DIR]

Features: binary presence of each word unigram and bigram seen in training (scikit-learn's
`CountVectorizer(ngram_range=(1, 2), binary=True)`); the inverse regularization strength
C is chosen on the validation split, and the test accuracy of that C is reported.
"""

import time

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from ml_transformer.data import bible, texts

flags.DEFINE_enum("dataset", "bible_testament", ["bible_testament", "imdb_reviews"], "Dataset.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's).")
FLAGS = flags.FLAGS


def bag_of_bigrams(splits: dict, cs=(0.1, 0.3, 1.0, 3.0, 10.0)) -> dict:
    """Accuracies of logistic regression on binary unigram + bigram features.

    `splits` maps 'train', 'validation', 'test' to (texts, labels). Returns the chosen C,
    its validation and test accuracy, and the validation accuracy of every C.
    """
    vectorizer = CountVectorizer(ngram_range=(1, 2), binary=True)
    train = vectorizer.fit_transform(splits["train"][0])
    features = {s: vectorizer.transform(splits[s][0]) for s in ("validation", "test")}
    models, validation = {}, {}
    for c in cs:
        models[c] = LogisticRegression(C=c, max_iter=2000).fit(train, splits["train"][1])
        validation[c] = models[c].score(features["validation"], splits["validation"][1])
    best = max(cs, key=validation.get)
    return {
        "C": best,
        "validation_accuracy": validation[best],
        "test_accuracy": models[best].score(features["test"], splits["test"][1]),
        "validation_by_C": validation,
        "features": train.shape[1],
    }


def load_splits(dataset: str, data_dir: str | None) -> dict:
    if dataset == "bible_testament":
        read = texts.bible_testament_reader(bible.prepare(texts.BIBLE_PAIR, data_dir))
    else:
        read = texts.imdb_reviews_reader(data_dir or tfds.core.constants.DATA_DIR)
    return {split: read(split) for split in texts.SPLITS}


def main(_):
    splits = load_splits(FLAGS.dataset, FLAGS.data_dir)
    for split, (_, labels) in splits.items():
        print(f"{split}: {len(labels)} texts, class counts {np.bincount(labels).tolist()}")
    start = time.perf_counter()
    result = bag_of_bigrams(splits)
    print(f"bag of bigrams ({result['features']} features), C={result['C']}: "
          f"validation {result['validation_accuracy']:.4f}, test {result['test_accuracy']:.4f} "
          f"({time.perf_counter() - start:.0f} s)")
    print("validation accuracy by C:", {c: round(a, 4) for c, a in result["validation_by_C"].items()})


if __name__ == "__main__":
    app.run(main)
