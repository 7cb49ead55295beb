"""Tasks by name (`config.task`): each entry is `module:class`, imported on first use."""

from ml_transformer.registry import resolve

TASKS = {
    "translation": "ml_transformer.tasks.translation:TranslationTask",
    "classification": "ml_transformer.tasks.classification:ClassificationTask",
    "language_model": "ml_transformer.tasks.language_model:LanguageModelTask",
    "text_to_image": "ml_transformer.tasks.text_to_image:TextToImageTask",
}


def make_task(config, workdir: str, mesh):
    """The task named by `config.task` (a `tasks.base.Task`)."""
    return resolve(TASKS, config.task, "config.task")(config, workdir, mesh)
