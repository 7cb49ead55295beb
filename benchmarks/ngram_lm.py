r"""Character n-gram baseline with Kneser-Ney smoothing for the Bible language model.

  python benchmarks/ngram_lm.py [--language=en] [--orders=3,4,5,6] [--max_verses=0] [--data_dir=]

The measure is the Transformer LM's bits per character (see
`ml_transformer/tasks/language_model.py`), on the same splits (`bible.read_verses`).
Each verse is a separate sequence: the model reads a start symbol, predicts each character
and then an end-of-verse symbol. bpc is the total -log2 p over a split divided by its
characters, where a verse of n characters counts n + 1. Character perplexity is 2**bpc.
One model per order in `--orders` is trained on the training verses. The order with the
lowest validation bpc is then scored on test. `--max_verses=N` keeps only the first N
verses of each split (the test suite uses this); 0 keeps them all.

Libraries: kaldingram (`NgramCounts`) estimates the model and writes an ARPA file.
This is back-off Kneser-Ney with one discount per order, D = n1 / (n1 + 2 n2), the
same as SRILM's `ngram-count -ukndiscount`; the code derives from Kaldi's `make_kn_lm.py`. The
`kenlm` query module loads that file and scores the verses. A few checked conditional
distributions sum to 1.000. Each character is one token. Whitespace characters are
named `<U+XXXX>` because both libraries split tokens on whitespace. Characters seen
fewer than 2 times in training become `<unk>`, so the model gives `<unk>` a probability.
Later splits' characters missing from that vocabulary are scored as `<unk>`, and the
data line counts them: 0 for en and de; 3 test characters for fr; 12 validation and
18 test characters for ko. Scoring `<unk>` slightly flatters bpc, because it pays once
for the whole class of rare characters.

The libraries compared (en, all 28,065 training verses, this machine, 2 CPU cores):
  nltk 3.10.4 `KneserNeyInterpolated`: too slow. At scoring time, `_continuation_counts`
    scans every higher-order context for each probability. Fitting takes 28 / 45 / 64 s
    for orders 3 / 4 / 5. Scoring runs at 3,860 / 940 / 152 characters/s, so the two
    ~198k-character splits take about 1.7 min / 7 min / 43 min. Its bpc on the first
    2,000 validation characters: 2.639 / 1.977 / 1.714. Only order 3 would fit in a
    few minutes, and it also uses a fixed discount of 0.1.
  kenlm 0.3.0 (also kenlm-ex 0.2.1 and ufal.kenlm 26.4.1): these packages can only
    load and query models: the module has `Model`, `LanguageModel`, `Config` and
    `State`, and none ships `lmplz`. They cannot build a model, so kenlm only scores
    here. It is compiled for orders up to 6, hence the cap on `--orders`.
  tokengrams 0.3.3 (EleutherAI): interpolated KN over a suffix array. Building the
    index takes 1.3 s; scoring the validation split takes 13-22 s at orders 4-8. Its
    validation bpc is worse: 1.630 at order 6 (1.599 here), and it degrades with order
    (1.645 at 8, 1.936 at 12; `estimate_deltas` changes it by 0.0002). Also,
    `import tokengrams` needs `datasets` and `transformers`.
  arpabo 0.3.0 `kneser_ney`: not a normalised model. Every back-off weight is 1, and
    p(. | context) sums to 1.18-1.76 on the contexts checked. Its ARPA file uses spaces
    instead of tabs, which KenLM rejects.
  knlm 0.1.2 (2019, sdist only): fast (order 6 trains in 2.5 s) but less accurate.
    Validation bpc is 1.775 / 1.747 at orders 5 / 6, against 1.713 / 1.599 here, and
    it is unmaintained.

Measured on this machine (2 CPU cores), `python benchmarks/ngram_lm.py` (en, orders 3-6):
  order 3: validation 2.5880 bits per character, perplexity 6.012 (training 5.6 s)
  order 4: validation 2.0025 bits per character, perplexity 4.007 (training 9.3 s)
  order 5: validation 1.7134 bits per character, perplexity 3.279 (training 16.1 s)
  order 6: validation 1.5987 bits per character, perplexity 3.029 (training 25.4 s)
  test, order 6 (best on validation, 1.5987): 1.5896 bits per character, character perplexity 3.010
  wall time 59.2 s (peak memory 375 MB). Scoring a split takes under 0.1 s at every order.
The best order is 6, the kenlm cap, so the baseline may still improve with order.
`--language=fr` gives test 1.6622 bpc at order 6 (validation 1.6475), also in 65 s.
KenLM's stderr note "The ARPA file is missing <unk>" (en, de) is harmless: no rare
training character means no <unk> token, and the script stops if a later split has a
character it would have to score as <unk>.
"""

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # kaldingram's progress bars; read when tqdm is imported

import math
import tempfile
import time
from collections import Counter

import kenlm
from absl import app, flags
from kaldingram.train import NgramCounts

from ml_transformer.data import bible

KENLM_MAX_ORDER = 6  # of the PyPI kenlm wheels (a higher order is refused at load time)
UNKNOWN = "<unk>"
MIN_COUNT = 2  # training characters seen fewer times are <unk>

flags.DEFINE_enum("language", "en", list(bible.LANGUAGES), "The translation.")
flags.DEFINE_list("orders", ["3", "4", "5", "6"], "n-gram orders tried; the best on validation is scored on test.")
flags.DEFINE_integer("max_verses", 0, "Keep only the first N verses of each split (0: all).")
flags.DEFINE_string("data_dir", "", "TFDS data directory (empty: TFDS's default).")
flags.register_validator(
    "orders", lambda orders: bool(orders) and all(o.isdigit() and 1 <= int(o) <= KENLM_MAX_ORDER for o in orders),
    message=f"--orders: integers from 1 to {KENLM_MAX_ORDER} (the kenlm wheel's maximum order)")
FLAGS = flags.FLAGS


def symbol(character: str) -> str:
    """Token of one character: itself, or `<U+XXXX>` where the libraries would split it."""
    if character.isspace() or not character.isprintable():
        return f"<U+{ord(character):04X}>"
    return character


class Vocabulary:
    """The tokens of the training characters seen at least `MIN_COUNT` times; others → <unk>."""

    def __init__(self, verses: list[str]):
        counts = Counter(character for verse in verses for character in verse)
        self.known = {character: symbol(character) for character, n in counts.items() if n >= MIN_COUNT}
        self.rare = len(counts) - len(self.known)  # character types the model's <unk> is estimated from

    def line(self, verse: str) -> str:
        """The verse as space-separated tokens."""
        return " ".join(self.known.get(character, UNKNOWN) for character in verse)

    def unknown(self, verses: list[str]) -> int:
        return sum(character not in self.known for verse in verses for character in verse)


def train(lines: list[str], order: int, path: str) -> kenlm.Model:
    """Kneser-Ney model of `order` over `lines` (tokens; start and end added), written
    as ARPA to `path` and loaded by kenlm."""
    counts = NgramCounts(order)
    for line in lines:
        counts.add_raw_counts_from_line(line)
    counts.cal_discounting_constants()
    counts.cal_f()
    counts.cal_bow()
    with open(path, "w", encoding="utf-8") as f:
        counts.print_as_arpa(fout=f)
    config = kenlm.Config()
    config.show_progress = False
    config.arpa_complain = kenlm.ARPALoadComplain.NONE
    return kenlm.Model(path, config)


def bits_per_character(model: kenlm.Model, lines: list[str], verses: list[str]) -> float:
    """Total -log2 p of the verses (each character and the end) / their characters + ends."""
    log10_p = sum(model.score(line, bos=True, eos=True) for line in lines)
    return -log10_p / math.log10(2) / sum(len(verse) + 1 for verse in verses)


def main(argv):
    del argv
    start = time.perf_counter()
    orders = [int(o) for o in FLAGS.orders]
    splits = {}
    for split in ("train", "validation", "test"):
        verses = bible.read_verses(FLAGS.language, split, FLAGS.data_dir or None)
        splits[split] = verses[:FLAGS.max_verses] if FLAGS.max_verses else verses
    vocabulary = Vocabulary(splits["train"])
    lines = {split: [vocabulary.line(verse) for verse in verses] for split, verses in splits.items()}
    sizes = ", ".join(f"{split} {len(verses):,} verses / {sum(len(v) + 1 for v in verses):,} characters"
                      for split, verses in splits.items())
    unknown = {split: vocabulary.unknown(splits[split]) for split in ("validation", "test")}
    if any(unknown.values()) and not vocabulary.rare:
        raise app.UsageError(f"characters unseen in training ({unknown}) and none rare enough there to estimate "
                             f"{UNKNOWN} from: use more training verses")
    print(f"{FLAGS.language}: {sizes} (ends included); {len(vocabulary.known)} character types (+ <unk>, end); "
          f"scored as <unk>: validation {unknown['validation']}, test {unknown['test']}", flush=True)

    best = None  # (validation bpc, order, model)
    with tempfile.TemporaryDirectory() as folder:
        for order in orders:
            began = time.perf_counter()
            model = train(lines["train"], order, os.path.join(folder, f"{order}.arpa"))
            trained = time.perf_counter()
            bpc = bits_per_character(model, lines["validation"], splits["validation"])
            print(f"order {order}: validation {bpc:.4f} bits per character, perplexity {2 ** bpc:.3f} "
                  f"(training {trained - began:.1f} s, scoring {time.perf_counter() - trained:.2f} s)", flush=True)
            if best is None or bpc < best[0]:
                best = (bpc, order, model)
            del model
    validation_bpc, order, model = best
    bpc = bits_per_character(model, lines["test"], splits["test"])
    print(f"test, order {order} (best on validation, {validation_bpc:.4f}): {bpc:.4f} bits per character, "
          f"character perplexity {2 ** bpc:.3f}")
    print(f"wall time {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    app.run(main)
