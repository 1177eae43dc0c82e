"""The multi-turn environment: prompt, message history, code extraction, feedback text, stop rule.

Pure Python (no database, no model): the collection pipeline and the trainers use it the same way.
"""

from app.env.extract import Extraction, extract, extract_code
from app.env.feedback import PASSED_TEXT, TIMEOUT_TEXT, feedback_text
from app.env.messages import FEEDBACK_PREFIX, append_turn, initial_messages, messages_for_turn
from app.env.prompt import PROMPT_TEMPLATE, build_prompt
from app.env.stop import STOP_RULES, StopRule, is_done, trajectory_label

__all__ = [
    "FEEDBACK_PREFIX",
    "PASSED_TEXT",
    "PROMPT_TEMPLATE",
    "STOP_RULES",
    "TIMEOUT_TEXT",
    "Extraction",
    "StopRule",
    "append_turn",
    "build_prompt",
    "extract",
    "extract_code",
    "feedback_text",
    "initial_messages",
    "is_done",
    "messages_for_turn",
    "trajectory_label",
]
