"""The multi-turn environment: prompt text, messages, code extraction, feedback text, stop rule."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from app.env import (
    FEEDBACK_PREFIX,
    PASSED_TEXT,
    PROMPT_TEMPLATE,
    TIMEOUT_TEXT,
    append_turn,
    build_prompt,
    extract,
    extract_code,
    feedback_text,
    initial_messages,
    is_done,
    messages_for_turn,
    trajectory_label,
)
from app.env.feedback import MAX_FEEDBACK_CHARS, TRUNCATION_MARK


@dataclass
class P:
    prompt: str
    shown_tests: list[str] = field(default_factory=list)
    setup_code: str = ""


MBPP_TRAIN = P(
    prompt="Write a function to find the shared elements from the given two lists.",
    shown_tests=[
        "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
        "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
        "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))",
    ],
)

EXPECTED_PROMPT = (
    "Write a Python function implementation for the following prompt:\n\n"
    "Write a function to find the shared elements from the given two lists.\n\n"
    "Your code should satisfy these tests:\n\n"
    "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))\n"
    "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))\n"
    "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))\n\n"
    "Return only the implementation code, no tests or explanations. Be sure to include the relevant import "
    "statements:\n```python\ncode\n```\n"
)


# -- prompt ---------------------------------------------------------------------------------------------
def test_prompt_is_the_papers_wording_exactly():
    assert build_prompt(MBPP_TRAIN) == EXPECTED_PROMPT
    # The template is data: the reference's f-string with two named slots.
    assert PROMPT_TEMPLATE.format(problem="X", tests="Y").startswith(
        "Write a Python function implementation for the following prompt:\n\nX\n\nYour code should satisfy "
        "these tests:\n\nY\n\n"
    )


def test_prompt_never_shows_hidden_setup_code():
    # What is shown is the loader's decision (MBPP puts its setup code in shown_tests); a HumanEval problem's
    # setup code defines the hidden check() and must not reach the model.
    p = P(prompt="Do it.", shown_tests=["assert f(1) == 2"], setup_code="def check(candidate): assert 0")
    text = build_prompt(p)
    assert "these tests:\n\nassert f(1) == 2\n\nReturn only" in text and "check" not in text


def test_prompt_accepts_dicts_and_keeps_braces_in_the_problem():
    p = {"prompt": "Return {'a': 1} for {x}.", "shown_tests": ["assert f() == {'a': 1}"], "setup_code": ""}
    text = build_prompt(p)
    assert "Return {'a': 1} for {x}." in text and "assert f() == {'a': 1}\n\n" in text


def test_prompt_trims_surrounding_newlines_of_humaneval_style_prompts():
    p = P(prompt='def f(x):\n    """Double x."""\n', shown_tests=["assert f(2) == 4"])
    assert 'def f(x):\n    """Double x."""\n\nYour code should' in build_prompt(p)


# -- messages -------------------------------------------------------------------------------------------
def test_the_exact_messages_turn_three_sees():
    r1 = "Here you go:\n```python\ndef similar_elements(a, b):\n    return a\n```"
    f1 = "AssertionError: assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))"
    r2 = "```python\ndef similar_elements(a, b):\n    return tuple(set(a) & set(b)\n```"
    f2 = "SyntaxError: '(' was never closed (line 2)"
    m1 = initial_messages(MBPP_TRAIN)
    m2 = append_turn(m1, r1, f1)
    m3 = append_turn(m2, r2, f2)
    assert m3 == [
        {"role": "user", "content": EXPECTED_PROMPT},
        {"role": "assistant", "content": r1},  # the raw response, not the extracted code
        {"role": "user", "content": "Feedback: " + f1},
        {"role": "assistant", "content": r2},
        {"role": "user", "content": "Feedback: " + f2},
    ]
    assert not any(m["role"] == "system" for m in m3)
    # Earlier turns' stored messages are not changed by later turns.
    assert m1 == [{"role": "user", "content": EXPECTED_PROMPT}] and len(m2) == 3
    assert messages_for_turn(MBPP_TRAIN, [(r1, f1), (r2, f2)]) == m3
    assert FEEDBACK_PREFIX == "Feedback: "


def test_append_turn_needs_a_history_ending_with_a_user_message():
    with pytest.raises(ValueError):
        append_turn([], "x", "y")
    m = append_turn(initial_messages(MBPP_TRAIN), "r", "f")
    with pytest.raises(ValueError):
        append_turn([*m, {"role": "assistant", "content": "r2"}], "r3", "f3")


# -- extraction: a corpus of response shapes ------------------------------------------------------------
CODE = "def f(x):\n    return x + 1"

CORPUS = [
    # (name, response, expected code, rule)
    ("python fence", f"```python\n{CODE}\n```", CODE, "fenced"),
    ("py fence", f"```py\n{CODE}\n```", CODE, "fenced"),
    ("bare fence", f"```\n{CODE}\n```", CODE, "fenced"),
    ("Python3 fence, any case", f"```Python3\n{CODE}\n```", CODE, "fenced"),
    ("prose around", f"Sure! Here is the function:\n\n```python\n{CODE}\n```\n\nIt adds one.", CODE, "fenced"),
    ("trailing text after fence", f"```python\n{CODE}\n```\nassert f(1) == 2 should pass", CODE, "fenced"),
    ("first of several", f"```python\n{CODE}\n```\nTests:\n```python\nassert f(1) == 2\n```", CODE, "fenced"),
    ("other language first", f"Install:\n```bash\npip install x\n```\nCode:\n```python\n{CODE}\n```", CODE, "fenced"),
    # The closing fence of a ```text block is not a bare opening fence: no Python fence → the whole text.
    ("other language closing fence is not a bare opening", f"```text\nout\n```\n{CODE}",
     f"```text\nout\n```\n{CODE}", "no_fence"),
    ("unterminated fence takes the rest (B2)", f"Here:\n```python\n{CODE}\n    # trunc",
     CODE + "\n    # trunc", "unterminated"),
    ("unterminated bare fence", f"```\n{CODE}", CODE, "unterminated"),
    ("no fence takes all", CODE, CODE, "no_fence"),
    ("no fence with prose", "I cannot do that.", "I cannot do that.", "no_fence"),
    ("stray closing fence at the end", f"{CODE}\n```\n", CODE, "no_fence"),
    ("CRLF line endings", f"```python\r\n{CODE.replace(chr(10), chr(13) + chr(10))}\r\n```\r\n", CODE, "fenced"),
    ("four backticks", f"````python\n{CODE}\n````", CODE, "fenced"),
    ("fence indented under a list item", "1. Code:\n   ```python\n   def f(x):\n       return x + 1\n   ```",
     CODE, "fenced"),
    ("closing fence glued to the last line", f"```python\n{CODE}```", CODE, "fenced"),
    ("info string with attributes", f"```python title=sol.py\n{CODE}\n```", CODE, "fenced"),
    ("empty python block", "```python\n```", "", "fenced"),
    ("truncated right after the opening fence", "Here it is:\n```python\n", "", "unterminated"),
    ("empty response", "", "", "no_fence"),
]


@pytest.mark.parametrize("name,response,code,rule", CORPUS, ids=[c[0] for c in CORPUS])
def test_extraction_corpus(name, response, code, rule):
    got = extract(response)
    assert got.code == code
    assert got.rule == rule
    assert extract_code(response) == code


def test_extraction_keeps_inner_indentation_and_blank_lines():
    body = "import math\n\n\nclass A:\n    def g(self):\n\n        return math.pi"
    assert extract_code(f"```python\n\n{body}\n\n```") == body


# -- feedback text --------------------------------------------------------------------------------------
def test_feedback_text_for_each_status():
    assert (
        feedback_text({"status": "passed", "feedback": "anything"}) == PASSED_TEXT == "Code passed all tests"
    )
    assert feedback_text({"status": "timeout", "feedback": ""}) == TIMEOUT_TEXT == "Code execution timed out"
    msg = "AssertionError: assert f(1) == 2 (test 1, line 3 of your code)"
    assert feedback_text({"status": "failed", "feedback": msg}) == msg
    assert feedback_text({"status": "error", "feedback": "NameError: name 'f' is not defined"}).startswith(
        "NameError"
    )
    # A failure with no message (e.g. the program exited early) still tells the model it failed.
    assert feedback_text({"status": "error", "feedback": ""}) != ""
    assert "memory" in feedback_text({"status": "memory"}).lower()
    assert feedback_text({"passed": True}) == PASSED_TEXT
    with pytest.raises(ValueError):
        feedback_text({"status": "sandbox_error", "feedback": "worker died"})
    with pytest.raises(ValueError):
        feedback_text({"status": "weird"})


def test_feedback_text_is_capped_with_a_visible_mark():
    long = "Traceback line\n" * 1000
    text = feedback_text({"status": "error", "feedback": long})
    assert len(text) <= MAX_FEEDBACK_CHARS and text.endswith(TRUNCATION_MARK)
    assert len(feedback_text({"status": "error", "feedback": long}, limit=100)) <= 100


def test_feedback_text_reads_execution_like_objects():
    @dataclass
    class Ex:
        status: str
        passed: bool
        feedback: str

    assert feedback_text(Ex("failed", False, "AssertionError")) == "AssertionError"


# -- stop rule and label --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "turn,public,private,rule,done",
    [
        (1, True, False, "public", True),  # default: the first public pass stops
        (1, False, None, "public", False),
        (2, False, None, "public", False),
        (3, False, None, "public", True),  # the turn budget
        (1, True, False, "public_and_private", False),  # reference rule: public pass, private fail → retry
        (1, True, True, "public_and_private", True),
        (1, False, True, "public_and_private", False),
        (3, True, False, "public_and_private", True),
    ],
)
def test_stop_rule(turn, public, private, rule, done):
    assert is_done(turn, 3, public, private, rule) is done


def test_stop_rule_refuses_missing_verdicts_and_bad_input():
    with pytest.raises(ValueError):
        is_done(1, 3, None, None, "public")
    with pytest.raises(ValueError):
        is_done(1, 3, True, None, "public_and_private")
    assert is_done(3, 3, None, None, "public") is True  # the budget alone decides
    with pytest.raises(ValueError):
        is_done(4, 3, False, False)
    with pytest.raises(ValueError):
        is_done(1, 3, True, True, "private")  # type: ignore[arg-type]


def test_trajectory_label_is_the_last_turns_private_verdict():
    assert trajectory_label([False, False, True]) is True
    assert trajectory_label([True]) is True
    assert trajectory_label([True, False]) is False  # only the last executed turn counts
    assert trajectory_label([False, None]) is None
    with pytest.raises(ValueError):
        trajectory_label([])
