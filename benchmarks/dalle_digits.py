r"""How well the small DALL-E draws what it is asked: prompt accuracy and diversity.

  python benchmarks/dalle_digits.py --workdir=runs/dalle_digits [--samples=100] [--scales=1,2,3,5] \
      [--checkpoint=latest] [--config=experiments/dalle_digits.py]

For each guidance scale, samples `--samples` images of every digit from the caption
"the digit D" with the run's checkpoint, then:
- prompt accuracy: the share of those images that scikit-learn's `SVC()` (the SVC of
  classifier_baselines.py), fitted on the real training images, labels as the prompted
  digit; printed next to the SVC's accuracy on the real test images;
- diversity: the mean Euclidean distance between two images of the same prompt (pixels
  scaled to 0..1), averaged over the digits, next to the same figure for the real test
  images of each digit (its ratio: 1 is as varied as real handwriting, 0 a collapse onto
  one image).
"""

import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from sklearn.svm import SVC

from ml_transformer import sharding
from ml_transformer.data import digit_captions as dc
from ml_transformer.tasks import make_task
from ml_transformer.train import restore

config_flags.DEFINE_config_file("config", "experiments/dalle_digits.py", "The run's experiment config.")
flags.DEFINE_string("workdir", None, "Workdir of a trained text-to-image run.", required=True)
flags.DEFINE_string("checkpoint", "latest", "Checkpoint to sample from (latest, best, STEP).")
flags.DEFINE_integer("samples", 100, "Images sampled per digit and scale.")
flags.DEFINE_list("scales", ["1", "2", "3", "5"], "Guidance scales.")
FLAGS = flags.FLAGS


def flat(images: np.ndarray) -> np.ndarray:
    """uint8 images `[..., 8, 8, 1]` (0..255) → `[N, 64]` in 0..1."""
    return images.reshape(-1, 64).astype(np.float64) / 255.0


def mean_pairwise_distance(images: np.ndarray) -> float:
    x = flat(images)
    distances = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0))
    return float(distances[np.triu_indices(len(x), 1)].mean())


def main(_):
    config = FLAGS.config
    mesh = sharding.mesh_from_config(config)
    task = make_task(config, FLAGS.workdir, mesh)
    restored = restore.restore_params(task, config, FLAGS.workdir, mesh, FLAGS.checkpoint)
    real = {split: task.data.images(split) for split in ("train", "test")}
    as_images = lambda tokens: np.stack([dc.image_from_tokens(t) for t in tokens])  # noqa: E731
    svc = SVC().fit(flat(as_images(real["train"][0])) * 255.0, real["train"][1])
    test_images, test_labels = as_images(real["test"][0]), real["test"][1]
    real_accuracy = float(np.mean(svc.predict(flat(test_images) * 255.0) == test_labels))
    real_diversity = np.mean([mean_pairwise_distance(test_images[test_labels == d]) for d in range(10)])
    print(f"step {restored.step}; SVC on real test images: accuracy {real_accuracy:.1%}; their diversity "
          f"{real_diversity:.3f}", flush=True)
    captions = [dc.caption(d, 1) for d in range(10)]
    for scale in map(float, FLAGS.scales):
        start = time.perf_counter()
        images = task.generate(restored.params, captions, guidance_scale=scale, num_samples=FLAGS.samples)
        seconds = time.perf_counter() - start
        predicted = svc.predict(flat(images) * 255.0).reshape(10, FLAGS.samples)
        accuracy = float(np.mean(predicted == np.arange(10)[:, None]))
        diversity = np.mean([mean_pairwise_distance(images[d]) for d in range(10)])
        print(f"guidance scale {scale:g}: prompt accuracy {accuracy:.1%} ({FLAGS.samples} per digit), diversity "
              f"{diversity:.3f} ({diversity / real_diversity:.2f} of the real images'), sampled in {seconds:.1f} s",
              flush=True)


if __name__ == "__main__":
    app.run(main)
