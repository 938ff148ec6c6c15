"""The fine-tuning engine: data, training loop, checkpoints, metrics, logs (see ``peft-equi finetune``)."""

from peft_equi.training.config import FinetuneConfig
from peft_equi.training.engine import Finetuner, TrainingDivergedError
from peft_equi.training.evaluation import evaluate

__all__ = ["FinetuneConfig", "Finetuner", "TrainingDivergedError", "evaluate"]
