"""Reference: translation of a split by transformers' `generate` on the run's exported model.

  python launch.py --config=experiments/translate_bible.py --workdir=DIR --mode=export --output=EXPORT
  .venv-torch/bin/python benchmarks/pytorch_generate.py --export=EXPORT [--split=test] [--count=0] \
      [--beam_size=4] [--alpha=1.0] [--config.KEY=VALUE ...]

Optional, and not a project dependency: it runs from the separate venv of
`benchmarks/pytorch_marian.py` (PyTorch, transformers and the project). The counterpart of
`benchmarks/decode.py`'s first two lines, on the same cores: greedy search, then beam search
(`--beam_size`, length penalty |Y|^`--alpha`, transformers' form), of the first `--count`
sources of `--split` (0: all), longest first in batches of the config's `batch_size`
sentences, at most source length + `decode.extra_len` new tokens each; seconds,
sentences/s and output tokens/s.
"""

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

try:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
except ModuleNotFoundError as e:
    sys.exit(f"error: {e.name} is not installed; this reference runs in a separate venv with torch and "
             "transformers (see the docstring of benchmarks/pytorch_generate.py)")

from ml_transformer.data import bible, pipeline

config_flags.DEFINE_config_file("config", "experiments/translate_bible.py", "The run's experiment config.")
flags.DEFINE_string("export", None, "Folder written by `launch.py --mode=export`.", required=True)
flags.DEFINE_string("split", "test", "Split whose sources are translated.")
flags.DEFINE_integer("count", 0, "Sentences translated (0: all).")
flags.DEFINE_integer("beam_size", 4, "Beam size of the beam search.")
flags.DEFINE_float("alpha", 1.0, "Length penalty of the beam search (|Y|^alpha).")
FLAGS = flags.FLAGS


def timed(model, batches: list[torch.Tensor], pad_id: int, extra_len: int, beam_size: int) -> tuple[float, int]:
    """(seconds, output tokens) of translating every batch."""
    beam = {"num_beams": beam_size, "length_penalty": FLAGS.alpha, "early_stopping": True} if beam_size > 1 else {}
    start, tokens = time.perf_counter(), 0
    with torch.inference_mode():
        for inputs in batches:
            outputs = model.generate(input_ids=inputs, attention_mask=inputs != pad_id, do_sample=False,
                                     max_new_tokens=inputs.shape[1] + extra_len, **beam)
            tokens += int((outputs[:, 1:] != pad_id).sum())  # after the decoder's start token
    return time.perf_counter() - start, tokens


def main(_):
    torch.set_num_threads(os.cpu_count())
    config = FLAGS.config
    tokenizer = AutoTokenizer.from_pretrained(FLAGS.export)
    model = AutoModelForSeq2SeqLM.from_pretrained(FLAGS.export).eval()
    sources, _ = pipeline.read_texts(bible.load_splits(config.data.pair, config.data.data_dir or None)[FLAGS.split])
    ids = tokenizer(sources[: FLAGS.count or len(sources)])["input_ids"]
    ids.sort(key=len, reverse=True)
    pad = tokenizer.pad_token_id
    batches = [tokenizer.pad({"input_ids": ids[start:start + config.batch_size]}, return_tensors="pt")["input_ids"]
               for start in range(0, len(ids), config.batch_size)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {FLAGS.split}: {len(ids)} sentences in "
          f"batches of {config.batch_size}", flush=True)
    for name, beam_size in [("greedy", 1), (f"beam {FLAGS.beam_size}", FLAGS.beam_size)]:
        seconds, tokens = timed(model, batches, pad, config.decode.extra_len, beam_size)
        print(f"pytorch {name}: {len(ids)} sentences in {seconds:.1f} s ({len(ids) / seconds:.1f} sentences/s, "
              f"{tokens / seconds:,.0f} tokens/s)", flush=True)


if __name__ == "__main__":
    app.run(main)
