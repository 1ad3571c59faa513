"""The rules of a decision, one file each, run in order by `pipeline.Pipeline`."""

from .base import CheckItem, Evaluator, Meter, Question
from .pipeline import KEY_RULES, RULES, Pipeline, RecallKey, key_verdict

__all__ = ["KEY_RULES", "RULES", "CheckItem", "Evaluator", "Meter", "Pipeline", "Question", "RecallKey", "key_verdict"]
