"""`python -m train.evaluate`: check the config and the set, generate what is missing,
score, and write results.json and results.md into output_dir."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..cli import EXIT_CONFIG_ERROR, configure_logging
from ..config import ConfigError
from .config import parse_command_line
from .datasets import EvaluationSetError, load_evaluation_set
from .store import GenerationStore, OutputDirError, generation_settings

logger = logging.getLogger(__name__)


def main(argv: Sequence[str]) -> int:
    """Run an evaluation; returns the process exit status (2: bad config, set or output folder)."""
    configure_logging()
    try:
        config = parse_command_line(argv)
        evaluation_set = load_evaluation_set(config.data)
        store = GenerationStore(config.output_dir)
        store.check_settings(generation_settings(config))
    except (ConfigError, EvaluationSetError, OutputDirError) as error:
        logger.error("%s", error)
        return EXIT_CONFIG_ERROR
    # Heavy imports only once the config, the set and the output folder are known to be good.
    from .generation import generate
    from .models import EvaluationModels
    from .report import build_report, write_report
    from .scoring import score

    models = EvaluationModels(config.models)
    counts = generate(config, evaluation_set, models, store)
    for system, count in counts.items():
        logger.info("%s: %d images generated, %d items skipped (already generated), %d turns without image",
                    system, count.generated, count.skipped, count.without_image)
    scores = score(config, evaluation_set, store, models.device)
    json_path, markdown_path = write_report(config.output_dir, build_report(config, evaluation_set, counts, scores))
    for system, results in scores.results.items():
        values = ", ".join(f"{name} {value:.2f}" for name, value in results.items() if value is not None)
        logger.info("%s: %s", system, values)
    logger.info("Wrote %s and %s", json_path, markdown_path)
    return 0
