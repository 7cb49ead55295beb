"""Checks that transformers loads a folder our code exported and computes what we expect.

    .venv-torch/bin/python tests/hf_fixtures/check_export.py FOLDER EXPECTED.npz
    .venv-torch/bin/python tests/hf_fixtures/check_export.py --self-test

FOLDER holds config.json and model.safetensors; the class is `architectures[0]` of config.json,
loaded in float32, eval mode. EXPECTED.npz holds:
  - forward arguments, any of: input_ids, attention_mask, token_type_ids, position_ids,
    decoder_input_ids, decoder_attention_mask, pixel_values (those the model's forward takes);
  - expected_name (0-d string, an output such as "logits" or "last_hidden_state"; one the model's
    output lacks is taken from its base model, e.g. last_hidden_state of ViTForImageClassification)
    and expected (the array); optionally expected_mask ([B, L] 0/1: compare only where 1);
  - optionally texts and ids (and ids_mask): AutoTokenizer.from_pretrained(FOLDER)(texts,
    padding=True) must give them (a tokenizer without a padding token, e.g. GPT-2's, encodes
    each text alone: its ids must be the row's where ids_mask is 1);
  - optionally greedy: generate(input_ids, attention_mask, num_beams=1, do_sample=False) must give
    it, padded with the pad id (an encoder-decoder's rows start with the decoder start token; a
    decoder-only model's include the prompt), max_new_tokens from its width.
Prints `FOLDER: <Class> max |difference| <value>` and exits 1 if that is above 1e-4 (--tol), or
if a tensor is missing from / unexpected in the checkpoint, or a tokenizer or greedy check fails.
--self-test runs it on the fixtures of this folder (and on broken copies, which must fail).
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

FORWARD_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids",
                "decoder_input_ids", "decoder_attention_mask", "pixel_values")


def _tensor(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).long() if a.dtype.kind in "iub" else torch.from_numpy(
        np.ascontiguousarray(a, dtype=np.float32))


def _output(out, name: str):
    if isinstance(out, dict) or hasattr(out, "keys"):
        if name in out.keys() and out[name] is not None:
            return out[name]
    value = getattr(out, name, None)
    return value


def check(folder: str | Path, npz_path: str | Path, tol: float = 1e-4) -> bool:
    """True if every check passes; prints one line per check."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # "Loading weights: ..." of transformers 5
    # MarianTokenizer without sacremoses skips Moses punctuation normalisation, as our side does
    warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
    folder = Path(folder)
    data = dict(np.load(npz_path, allow_pickle=False))
    ok = True
    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    cls = getattr(transformers, arch)
    model, info = cls.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    model.eval()
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(kind):
            print(f"{folder}: {arch} {kind.replace('_', ' ')}: {sorted(map(str, info[kind]))}")
            ok = False

    def call(module):
        params = inspect.signature(module.forward).parameters
        kwargs = {k: _tensor(data[k]) for k in FORWARD_KEYS if k in data and k in params}
        with torch.no_grad():
            return module(**kwargs)

    if "expected" in data:
        name = str(data["expected_name"])
        value = _output(call(model), name)
        if value is None:  # e.g. last_hidden_state of a ...ForImageClassification
            base = getattr(model, model.base_model_prefix, None)
            if base is not None and base is not model:
                value = _output(call(base), name)
        if value is None:
            print(f"{folder}: {arch} has no output {name!r}")
            return False
        got = value.float().numpy()
        want = data["expected"]
        if got.shape != want.shape:
            print(f"{folder}: {arch} {name} shape {got.shape}, expected {want.shape}")
            return False
        diff = np.abs(got - want)
        if "expected_mask" in data:
            mask = data["expected_mask"].astype(bool)
            diff = diff[mask]  # [B, L] mask over the leading axes of [B, L, ...]
        worst = float(diff.max()) if diff.size else 0.0
        print(f"{folder}: {arch} max |difference| {worst:.3g}")
        ok &= bool(np.isfinite(worst) and worst <= tol)

    if "texts" in data and "ids" in data:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        texts = [str(t) for t in data["texts"]]
        if tokenizer.pad_token is None:  # e.g. GPT-2's: each text alone, against ids where ids_mask is 1
            got = [tokenizer(text)["input_ids"] for text in texts]
            masks = data.get("ids_mask", np.ones_like(data["ids"]))
            want = [[int(i) for i, m in zip(row, mask) if m] for row, mask in zip(data["ids"], masks)]
            same = got == want
        else:
            enc = tokenizer(texts, padding=True, return_tensors="np")
            got, want = enc["input_ids"].tolist(), data["ids"].tolist()
            same = enc["input_ids"].shape == data["ids"].shape and (enc["input_ids"] == data["ids"]).all()
            if "ids_mask" in data:
                same &= enc["attention_mask"].shape == data["ids_mask"].shape and bool(
                    (enc["attention_mask"] == data["ids_mask"]).all())
        print(f"{folder}: {type(tokenizer).__name__} ids {'equal' if same else 'DIFFER'}")
        if not same:
            print("  got", got, "\n  expected", want)
        ok &= bool(same)

    if "greedy" in data:
        want = data["greedy"]
        input_ids = data["input_ids"] if "input_ids" in data else data["ids"]
        attention_mask = data.get("attention_mask", data.get("ids_mask", np.ones_like(input_ids)))
        if model.config.is_encoder_decoder:
            new_tokens = want.shape[1] - 1
        else:
            new_tokens = want.shape[1] - input_ids.shape[1]
        pad = model.generation_config.pad_token_id
        if pad is None:
            pad = model.config.pad_token_id if model.config.pad_token_id is not None else model.generation_config.eos_token_id
        if isinstance(pad, (list, tuple)):
            pad = pad[0]
        with torch.no_grad():
            out = model.generate(input_ids=_tensor(input_ids), attention_mask=_tensor(attention_mask),
                                 num_beams=1, do_sample=False, max_new_tokens=new_tokens,
                                 pad_token_id=pad).numpy()
        got = np.full(want.shape, pad, np.int64)
        got[:, :min(out.shape[1], want.shape[1])] = out[:, :want.shape[1]]
        same = out.shape[1] <= want.shape[1] and (got == want).all()
        print(f"{folder}: {arch} greedy {'equal' if same else 'DIFFERS'}")
        if not same:
            print("  got", out.tolist(), "\n  expected", want.tolist())
        ok &= bool(same)
    return bool(ok)


def self_test() -> bool:
    """The fixtures must pass, broken copies must fail."""
    from safetensors.numpy import load_file, save_file

    here = Path(__file__).resolve().parent
    passed = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def npz(name, **arrays):
            path = tmp / f"{name}.npz"
            np.savez(path, **arrays)
            return path

        def golden(name):
            return dict(np.load(here / name / "golden.npz"))

        bert, vit, vit_model, marian, gpt2 = map(golden, ("bert", "vit", "vit_model", "marian", "gpt2"))
        bert_in = {k: bert[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        marian_in = {k: marian[k] for k in ("input_ids", "attention_mask", "decoder_input_ids",
                                              "decoder_attention_mask")}
        good = [
            ("bert", npz("bert_h", **bert_in, expected_name="last_hidden_state", expected=bert["last_hidden_state"])),
            ("bert", npz("bert_p", **bert_in, expected_name="pooler_output", expected=bert["pooler_output"])),
            ("vit", npz("vit_l", pixel_values=vit["pixel_values"], expected_name="logits", expected=vit["logits"])),
            ("vit", npz("vit_h", pixel_values=vit["pixel_values"], expected_name="last_hidden_state",
                        expected=vit["last_hidden_state"])),
            ("vit_model", npz("vitm", pixel_values=vit_model["pixel_values"], expected_name="pooler_output",
                              expected=vit_model["pooler_output"])),
            ("gpt2", npz("gpt2", input_ids=gpt2["input_ids"], attention_mask=gpt2["attention_mask"],
                         expected_name="logits", expected=gpt2["logits"])),
            ("gpt2", npz("gpt2_left", input_ids=gpt2["left_input_ids"], attention_mask=gpt2["left_attention_mask"],
                         position_ids=gpt2["left_position_ids"], expected_name="logits",
                         expected=gpt2["left_logits"], expected_mask=gpt2["left_attention_mask"])),
            ("gpt2", npz("gpt2_greedy", input_ids=gpt2["left_input_ids"], attention_mask=gpt2["left_attention_mask"],
                         greedy=gpt2["left_greedy"])),
            ("marian", npz("marian", **marian_in, expected_name="logits", expected=marian["logits"],
                           texts=marian["texts"], ids=marian["input_ids"], ids_mask=marian["attention_mask"],
                           greedy=marian["greedy"])),
        ]
        bad_ids = marian["input_ids"].copy()
        bad_ids[0, 0] += 1
        bad_greedy = marian["greedy"].copy()
        bad_greedy[1, 2] = (bad_greedy[1, 2] + 1) % (bad_greedy.max() - 1)
        # bert without one tensor (transformers would initialise it at random)
        broken = tmp / "bert_missing"
        shutil.copytree(here / "bert", broken)
        tensors = load_file(str(broken / "model.safetensors"))
        tensors.pop("pooler.dense.bias")
        save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
        bad = [
            ("bert", npz("bert_off", **bert_in, expected_name="last_hidden_state",
                         expected=bert["last_hidden_state"] + 1e-3)),
            ("gpt2", npz("gpt2_nomask", input_ids=gpt2["left_input_ids"], attention_mask=gpt2["left_attention_mask"],
                         expected_name="logits", expected=gpt2["left_logits"],  # no position_ids
                         expected_mask=gpt2["left_attention_mask"])),
            ("marian", npz("marian_ids", texts=marian["texts"], ids=bad_ids)),
            ("marian", npz("marian_greedy", input_ids=marian["input_ids"], attention_mask=marian["attention_mask"],
                           greedy=bad_greedy)),
            (broken, npz("bert_missing", **bert_in, expected_name="pooler_output", expected=bert["pooler_output"])),
        ]
        for folder, path in good:
            folder = folder if isinstance(folder, Path) else here / folder
            if not check(folder, path):
                print(f"SELF-TEST FAILED: {path.name} should pass")
                passed = False
        for folder, path in bad:
            folder = folder if isinstance(folder, Path) else here / folder
            if check(folder, path):
                print(f"SELF-TEST FAILED: {path.name} should fail")
                passed = False
    print("self-test", "passed" if passed else "FAILED")
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?")
    parser.add_argument("expected", nargs="?")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        sys.exit(0 if self_test() else 1)
    if not (args.folder and args.expected):
        parser.error("FOLDER and EXPECTED.npz are needed (or --self-test)")
    sys.exit(0 if check(args.folder, args.expected, args.tol) else 1)


if __name__ == "__main__":
    main()
