"""Training and evaluation defaults and choices, torch-free: the library and the CLI read them from here.

``spr train``'s option defaults and choices (``cli/train_cmds.py``) and :class:`registry.ml.training.TrainConfig`
use the same constants, so they cannot drift apart. Importing this module imports no torch.
"""

from __future__ import annotations

METHODS: dict[str, str] = {
    "prompt-tuning": "PROMPT_TUNING",
    "p-tuning": "P_TUNING",
    "prefix-tuning": "PREFIX_TUNING",
    "lora": "LORA",
}
"""``--method`` values and the PEFT type each makes."""

INITS: dict[str, str] = {"random": "RANDOM", "text": "TEXT", "sample-vocab": "SAMPLE_VOCAB"}
"""``--init`` values (prompt tuning only) and PEFT's ``PromptTuningInit`` names."""

DEFAULT_METHOD = "prompt-tuning"
DEFAULT_TEMPLATE = "{prompt}"
DEFAULT_VIRTUAL_TOKENS = 4  # the tutorials' RANDOM-init setting (4,096 parameters on bloomz-560m)
DEFAULT_EPOCHS = 6.0
DEFAULT_LR = 3e-3
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_LENGTH = 256
DEFAULT_SEED = 42
DEFAULT_EVAL_SPLIT = 0.1
DEFAULT_LORA_R = 8
DEFAULT_LORA_DROPOUT = 0.05
DEFAULT_DEVICE = "auto"
DEVICES = ("auto", "cpu", "cuda")
MAX_CURVE_POINTS = 1000  # a loss curve of a long run is thinned to about this many logged steps

METRICS: dict[str, str] = {
    "loss": "eval_loss",
    "perplexity": "perplexity",
    "exact-match": "exact_match",
    "rouge-l": "rouge_l",
}
"""``spr eval --metric`` choices and the metric name each is recorded under."""

GENERATION_METRICS = ("exact-match", "rouge-l")
DEFAULT_EVAL_BATCH_SIZE = 8
DEFAULT_EVAL_NEW_TOKENS = 64  # generation length for exact-match / rouge-l
DEFAULT_GENERATE_NEW_TOKENS = 32
TUTORIAL_REPETITION_PENALTY = 1.5  # the tutorials' generate() setting

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_DEVICE",
    "DEFAULT_EPOCHS",
    "DEFAULT_EVAL_BATCH_SIZE",
    "DEFAULT_EVAL_NEW_TOKENS",
    "DEFAULT_EVAL_SPLIT",
    "DEFAULT_GENERATE_NEW_TOKENS",
    "DEFAULT_LORA_DROPOUT",
    "DEFAULT_LORA_R",
    "DEFAULT_LR",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_METHOD",
    "DEFAULT_SEED",
    "DEFAULT_TEMPLATE",
    "DEFAULT_VIRTUAL_TOKENS",
    "DEVICES",
    "GENERATION_METRICS",
    "INITS",
    "MAX_CURVE_POINTS",
    "METHODS",
    "METRICS",
    "TUTORIAL_REPETITION_PENALTY",
]
