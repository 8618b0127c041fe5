"""Training: the single-process stage loop (``loop``) and its Ray Train wrapper (``distributed``)."""

from .loop import (  # noqa: F401
    DEFAULT_LR, DEFAULT_MINUTES, STAGES, StageConfig, StageResult, StageTrainer, calibrate_latent_scale,
    parse_budgets, random_batches, train_generator, train_stage, trainable_network,
)
