"""Exports our models and has transformers check each export against our JAX model's outputs.

"transformers loads our export and computes what our model does" as one command, run with
the project's python (transformers runs in a separate one, `--torch_python`):

    python tests/hf_fixtures/check_exports.py [--torch_python=.venv-torch/bin/python] [--out=DIR] [CASE ...]

Each case writes OUT/CASE/ with `interop.export` (as `--mode=export` does) and OUT/CASE.npz: the
inputs and our JAX model's outputs in transformers' ids (`check_export.py`'s keys), then runs
`check_export.py OUT/CASE OUT/CASE.npz` with the torch python and prints its lines. Cases:
  vit, gpt2, marian       the fixtures of this folder imported and exported again (not bert: our text
                          classifier is not exportable); logits, and Marian's tokenizer ids and greedy
  pegasus, marian_post_ln translate_bible smoke at random (pre-LN, our interleaved sinusoidal table →
                          Pegasus; post-LN → Marian), a tiny SentencePiece tokenizer of SENTENCES:
                          logits, tokenizer ids, greedy
  lm                      lm_bible smoke → GPT-2: logits, tokenizer ids (its tokenizer.json, BOS first)
  vit_digits, dalle       vit_digits smoke → ViTForImageClassification (1 channel); dalle_digits smoke
                          → GPT-2 (no tokenizer): logits
Logits must agree within 1e-4 (our translation models' LayerNorm epsilon is 1e-6, transformers'
Pegasus and Marian fix 1e-5: up to ~3e-5 apart). Exits 1 if any check fails. OUT defaults to a
temporary folder, removed at the end; a given OUT keeps the files (its case folders replaced).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ml_transformer import interop
from ml_transformer.data import digit_captions
from ml_transformer.data.tokenizer import BOS_ID, TOKENIZER_FILE, train_tokenizer
from ml_transformer.interop import tensors
from ml_transformer.models import vit
from ml_transformer.models.seq2seq import Seq2Seq, shift_right
from ml_transformer.tasks import language_model, translation

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VOCAB = 100  # of our tiny SentencePiece tokenizers
GREEDY_TOKENS = 8  # new tokens of the greedy checks
SENTENCES = [  # English and French, the corpus of our tokenizers
    "In the beginning God created the heaven and the earth.", "Au commencement, Dieu créa les cieux et la terre.",
    "And the earth was without form, and void.", "La terre était informe et vide.",
    "And God said, Let there be light: and there was light.", "Dieu dit: Que la lumière soit! Et la lumière fut.",
    "And God saw the light, that it was good.", "Dieu vit que la lumière était bonne.",
    "And God called the light Day.", "Dieu appela la lumière jour.",
    "And the darkness he called Night.", "Il appela les ténèbres nuit.",
    "The cat sleeps on the warm stone.", "Le chat dort sur la pierre chaude.",
    "The children play in the garden.", "Les enfants jouent dans le jardin.",
    "My brother reads a book every night.", "Mon frère lit un livre chaque soir.",
    "The river runs to the sea.", "Le fleuve coule vers la mer.",
    "We eat bread and drink water.", "Nous mangeons du pain et buvons de l'eau.",
    "The king gave a feast for his servants.", "Le roi donna un festin à ses serviteurs.",
    "She opened the door and saw the mountains.", "Elle ouvrit la porte et vit les montagnes.",
    "The wind blew all day long.", "Le vent souffla toute la journée.",
    "Seven years of plenty came upon the land.", "Sept années d'abondance vinrent sur le pays.",
    "The shepherd counted his sheep at evening.", "Le berger compta ses brebis le soir.",
    "A small boat crossed the lake.", "Une petite barque traversa le lac.",
    "The old man planted a tree.", "Le vieil homme planta un arbre.",
    "They built a house of stone.", "Ils bâtirent une maison de pierre.",
    "The birds sing in the morning.", "Les oiseaux chantent le matin.",
    "Go in peace, and be blessed.", "Va en paix, et sois béni.",
    "The door of the temple was open.", "La porte du temple était ouverte.",
    "He wrote a letter to his friend.", "Il écrivit une lettre à son ami.",
    "The stars shine above the hills.", "Les étoiles brillent au-dessus des collines.",
    "Bring me water from the well.", "Apporte-moi de l'eau du puits.",
]
SOURCES = SENTENCES[0:6:2] + ["Zebras! (unseen)"]  # English: tokenizer ids and the encoder's inputs
TARGETS = SENTENCES[1:9:2]  # French: the decoder's


def experiment(name: str, arg: str = "smoke"):
    """`get_config(arg)` of `experiments/<name>.py`."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def padded(rows, pad: int = 0) -> np.ndarray:
    out = np.full((len(rows), max(map(len, rows))), pad, np.int32)
    for row, ids in zip(out, rows):
        row[:len(ids)] = ids
    return out


def random_params(model, *example, seed: int = 0) -> dict:
    """Every parameter drawn at random (LayerNorm scales around 1), so that a wrong mapping shows."""
    shapes = tensors.flat(jax.eval_shape(model.init, jax.random.key(0), *example)["params"])
    rng = np.random.default_rng(seed)
    return tensors.nested({k: rng.normal(1.0 if k.endswith("scale") else 0.0, 0.3, s.shape).astype(np.float32)
                           for k, s in shapes.items()})


def imported(config, fixture: str, make_model, *example):
    """(our model of the fixture's checkpoint, its parameters), `config` made its architecture."""
    checkpoint = interop.open_checkpoint(str(HERE / fixture))
    interop.apply_to_config(config, checkpoint)
    model = make_model(config)
    shapes = tensors.flat(jax.eval_shape(model.init, jax.random.key(0), *example)["params"])
    params, _ = interop.load_params(checkpoint, {k: v.shape for k, v in shapes.items()})
    return model, tensors.nested(params)


def seq2seq(config, vocab_size: int | None = None) -> Seq2Seq:
    vocab_size = vocab_size or config.model.vocab_size
    return Seq2Seq(translation.model_config(config, vocab_size, config.model.get("bos_id", BOS_ID)))


def our_tokenizer(workdir: Path):
    """Our SentencePiece tokenizer of SENTENCES, as a run's `workdir/tokenizer.model`."""
    return train_tokenizer(SENTENCES, str(workdir / TOKENIZER_FILE), VOCAB, character_coverage=1.0)


# ------------------------------------------------------------------ what transformers must give
def translation_arrays(model: Seq2Seq, params, tokenizer, sources, targets, shifted: bool = False) -> dict:
    """Logits of `sources` and `targets` under teacher forcing, tokenizer ids of `sources`,
    greedy. `shifted`: the fixture's Marian vocabulary, their id i our (i + 1) mod V (their
    padding, the last id, our 0)."""
    size, bos = model.config.vocab_size, model.config.bos_id
    theirs = (lambda ids: (ids - 1) % size) if shifted else (lambda ids: ids)  # noqa: E731
    inputs, targets = padded(tokenizer.encode_batch(sources)), padded(tokenizer.encode_batch(targets))
    logits = np.asarray(model.apply({"params": params}, inputs, targets))
    out = translation.translate(model, params, jnp.asarray(inputs), beam_size=1, alpha=0.0, extra_len=GREEDY_TOKENS,
                                bos_id=bos, eos_id=tokenizer.eos_id, min_len=0)
    greedy = length_limited(np.asarray(out), GREEDY_TOKENS, tokenizer.eos_id)
    return dict(input_ids=theirs(inputs), attention_mask=inputs > 0,
                decoder_input_ids=theirs(np.asarray(shift_right(targets, bos))), decoder_attention_mask=targets > 0,
                expected_name="logits", expected=np.roll(logits, -1, axis=-1) if shifted else logits,
                expected_mask=targets > 0, texts=sources, ids=theirs(inputs), ids_mask=inputs > 0,
                greedy=theirs(np.concatenate([np.full((len(out), 1), bos), greedy], axis=1)))


def length_limited(out: np.ndarray, width: int, eos: int) -> np.ndarray:
    """Our greedy outputs (limit ≥ width) cut to `width` tokens as transformers' generate
    (max_new_tokens=width) gives them: a row not ended by its last token ends there with EOS
    (the export's forced_eos_token_id; our translate ends a row at its limit likewise)."""
    rows = out[:, :width].copy()
    for row in rows:
        end = list(row).index(eos) if eos in row[:-1] else width - 1
        row[end], row[end + 1:] = eos, 0
    return rows


def decoder_only_arrays(model, params, ours: np.ndarray) -> dict:
    """Logits of our ids `ours` (right-padded); GPT-2's ids are ours minus 1 (it has no padding)."""
    logits = np.asarray(model.apply({"params": params}, ours))
    return dict(input_ids=np.maximum(ours - 1, 0), attention_mask=ours > 0, expected_name="logits",
                expected=logits[..., 1:], expected_mask=ours > 0)


def vit_arrays(model, params, images: np.ndarray) -> dict:
    """Logits of NHWC `images`; transformers' pixel_values are NCHW."""
    logits = np.asarray(model.apply({"params": params}, images))
    return dict(pixel_values=images.transpose(0, 3, 1, 2), expected_name="logits", expected=logits)


# ------------------------------------------------------------------ the cases
# Each makes a run's config, parameters and the case's arrays; `workdir` is the run's (for its tokenizer).
TOKENS = np.ones((1, 4), np.int32)  # example inputs of `init`


def vit_fixture(workdir: Path):
    config = experiment("vit_digits")
    model, params = imported(config, "vit", lambda c: vit.from_config(c.model, c.model.num_classes),
                             np.zeros((1, 32, 32, 3), np.float32))
    images = np.load(HERE / "vit" / "golden.npz")["pixel_values"].transpose(0, 2, 3, 1)
    return config, params, vit_arrays(model, params, images)


def gpt2_fixture(workdir: Path):
    config = experiment("lm_bible")
    model, params = imported(config, "gpt2", lambda c: language_model.decoder_only(c, c.model.vocab_size), TOKENS)
    golden = np.load(HERE / "gpt2" / "golden.npz")  # right-padded
    return config, params, decoder_only_arrays(model, params, (golden["input_ids"] + 1) * golden["attention_mask"])


def marian_fixture(workdir: Path):
    config = experiment("translate_bible")
    model, params = imported(config, "marian", seq2seq, TOKENS, TOKENS)
    golden = np.load(HERE / "marian" / "golden.npz")
    return config, params, translation_arrays(model, params, interop.pretrained_tokenizer(config), golden["texts"],
                                              golden["target_texts"], shifted=True)


def our_translation_model(pre_ln: bool, seed: int):
    def case(workdir: Path):
        config = experiment("translate_bible")
        config.model.pre_ln, config.data.vocab_size = pre_ln, VOCAB
        tokenizer = our_tokenizer(workdir)
        model = seq2seq(config, tokenizer.vocab_size)
        params = random_params(model, TOKENS, TOKENS, seed=seed)
        return config, params, translation_arrays(model, params, tokenizer, SOURCES, TARGETS)
    return case


def our_lm(workdir: Path):
    config = experiment("lm_bible")
    config.data.vocab_size = VOCAB
    tokenizer = our_tokenizer(workdir)
    model = language_model.decoder_only(config, tokenizer.vocab_size)
    params = random_params(model, TOKENS, seed=2)
    ours = padded([[BOS_ID] + ids[:-1] for ids in tokenizer.encode_batch(SOURCES)])  # BOS, pieces: our prompts
    return config, params, {**decoder_only_arrays(model, params, ours), "texts": SOURCES,
                            "ids": np.maximum(ours - 1, 0), "ids_mask": ours > 0}


def our_vit(workdir: Path):
    config = experiment("vit_digits")
    model = vit.from_config(config.model, 10)
    images = np.random.default_rng(3).uniform(0, 16, (3, 8, 8, 1)).astype(np.float32)
    params = random_params(model, images[:1], seed=3)
    return config, params, vit_arrays(model, params, images)


def our_dalle(workdir: Path):
    config = experiment("dalle_digits")
    model = language_model.decoder_only(config, digit_captions.VOCAB_SIZE)
    params = random_params(model, TOKENS, seed=4)
    ours = np.random.default_rng(4).integers(1, digit_captions.VOCAB_SIZE, (3, digit_captions.SEQUENCE_LENGTH))
    ours[1, 30:], ours[2, 50:] = 0, 0  # right padding
    return config, params, decoder_only_arrays(model, params, ours.astype(np.int32))


CASES = {"vit": vit_fixture, "gpt2": gpt2_fixture, "marian": marian_fixture,
         # seeds whose greedy outputs vary (a tiny random model tends to repeat one token)
         "pegasus": our_translation_model(pre_ln=True, seed=3),
         "marian_post_ln": our_translation_model(pre_ln=False, seed=2),
         "lm": our_lm, "vit_digits": our_vit, "dalle": our_dalle}


def run_case(name: str, out: Path, torch_python: str) -> bool:
    """Exports the case into OUT/NAME, writes OUT/NAME.npz, and runs check_export.py on them."""
    folder, npz, workdir = out / name, out / f"{name}.npz", out / "workdirs" / name
    for path in (folder, workdir):
        shutil.rmtree(path, ignore_errors=True)
    workdir.mkdir(parents=True)
    try:
        config, params, arrays = CASES[name](workdir)
        interop.export(config, params, str(workdir), str(folder))
    except Exception as e:  # a case of ours that fails is reported, and the other cases run
        print(f"{name}: {type(e).__name__}: {e}")
        return False
    np.savez(npz, **arrays)
    result = subprocess.run([torch_python, str(HERE / "check_export.py"), str(folder), str(npz)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(result.stdout, end="", flush=True)
    return result.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch_python", default=".venv-torch/bin/python",
                        help="a python with torch and transformers")
    parser.add_argument("--out", help="folder to keep the exports and npz files in (default: temporary)")
    parser.add_argument("cases", nargs="*", help=f"of {', '.join(CASES)} (default: all)")
    args = parser.parse_args()
    if not shutil.which(args.torch_python):
        parser.error(f"--torch_python={args.torch_python}: not found")
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}: of {', '.join(CASES)}")
    out = Path(args.out or tempfile.mkdtemp(prefix="check_exports-"))
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    try:
        failed = [name for name in args.cases or CASES if not run_case(name, out, args.torch_python)]
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    names = args.cases or list(CASES)
    print(f"{len(names) - len(failed)}/{len(names)} exports pass ({time.time() - start:.0f} s)"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
