"""Training: the single-process stage loop (``loop``), its Ray Train wrapper (``distributed``)
and the training catalog as a Ray Data stream (``data``).

The loop's names are re-exported lazily: Ray Data's processes import ``training.data`` and must
not pay for torch and the models through this package's ``__init__``.
"""

_LOOP_NAMES = (
    "DEFAULT_LR", "DEFAULT_MINUTES", "STAGES", "StageConfig", "StageResult", "StageTrainer",
    "calibrate_latent_scale", "parse_budgets", "random_batches", "train_generator", "train_stage",
    "trainable_network",
)
__all__ = list(_LOOP_NAMES)


def __getattr__(name: str):
    if name in _LOOP_NAMES:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
