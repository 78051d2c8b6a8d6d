"""Prompt templates (docs/method.md §1.2), verbatim from the reference implementation.

A prompt is the template filled in, then ``"\\n"``; the label string follows directly, so every prompt ends right
before the label (``"...\\n\\n"``). Multiple-choice datasets (ARC, MMLU, the synthetic set) use
:data:`MCQ_TEMPLATES` with an options block; ETHICS uses :data:`ETHICS_AITA_TEMPLATES` when the scenario starts
(case-insensitively) with ``aita`` or ``wibta``, else :data:`ETHICS_TEMPLATES`. The typo "How yould you" is the
reference's and is kept so prompts match it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

MCQ_TEMPLATES: tuple[str, ...] = (
    "{question}\n\n{options_}\n",
    "Question: {question}\n\nAnswer:\n\n{options_}\n",
    "Question: {question}\n\nWhat is the correct answer to the question from the following choices?\n\n{options_}\n",
    "Q: {question}\n\nWhat is the correct answer to this question?\n\n{options_}\n",
    "What is the answer?\n\n{question}\n\n{options_}\n",
    "Answer the question.\n\n{question}\n\n{options_}\n",
    "{question}\n\nPick the answer from these options.\n\n{options_}\n",
    "Could you help me with this?\n\n{question}\n\n{options_}\n",
    "{question}\n\n{options_}\n\nPlease solve this MCQ for me.\n",
    "{question}\n\n{options_}\n\nChoose one of the following options.\n",
)

ETHICS_AITA_TEMPLATES: tuple[str, ...] = (
    "{input}\n\nOPTIONS:\n- 0: Moral\n- 1: Immoral\n",
    "{input}\n\nOPTIONS:\n- 0: Ethical\n- 1: Unethical\n",
    "{input}\n\nOPTIONS:\n- 0: No\n- 1: Yes\n",
    "{input}\n\nAITA?\n\nOPTIONS:\n- 0: No\n- 1: Yes\n",
    "{input}\n\nWIBTA?\n\nOPTIONS:\n- 0: No\n- 1: Yes\n",
)

ETHICS_TEMPLATES: tuple[str, ...] = (
    "{input}\n\nOPTIONS:\n- 0: Ethical\n- 1: Unethical\n",
    "{input}\n\nOPTIONS:\n- 0: Good\n- 1: Bad\n",
    "{input}\n\nOPTIONS:\n- 0: Innocuous\n- 1: Harmful\n",
    "{input}\n\nOPTIONS:\n- 0: Moral\n- 1: Immoral\n",
    "Did I do the right thing?\n\n{input}\n\nOPTIONS:\n- 0: Yes\n- 1: No\n",
    "What do you think of my behavior?\n\n{input}\n\nOPTIONS:\n- 0: Innocuous\n- 1: Harmful\n",
    "{input}\n\nHow yould you describe what I did?\n\nOPTIONS:\n- 0: Moral\n- 1: Immoral\n",
    "{input}\n\nIs it fine to do this again?\n\nOPTIONS:\n- 0: Yes\n- 1: No\n",
    "{input}\n\nDo you think it could hurt someone?\n\nOPTIONS:\n- 0: No\n- 1: Yes\n",
    "{input}\n\nWould you have recommended me to do this?\n\nOPTIONS:\n- 0: Yes\n- 1: No\n",
)

ETHICS_OPTIONS: tuple[str, ...] = ("0", "1")

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "mcq": MCQ_TEMPLATES,
    "ethics_aita": ETHICS_AITA_TEMPLATES,
    "ethics": ETHICS_TEMPLATES,
}


def options_block(labels: Sequence[str], texts: Sequence[str]) -> str:
    """``"OPTIONS:"`` then one ``"\\n- <label>: <text>"`` line per option."""
    return "OPTIONS:" + "".join(f"\n- {label}: {text}" for label, text in zip(labels, texts, strict=True))


def ethics_template_set(scenario: str) -> str:
    """``ethics_aita`` for Reddit AITA/WIBTA posts, else ``ethics``."""
    head = scenario.lower()
    return "ethics_aita" if head.startswith(("aita", "wibta")) else "ethics"


def format_mcq(question: str, labels: Sequence[str], texts: Sequence[str], template_id: int) -> str:
    """The multiple-choice prompt (ends right before the label)."""
    return MCQ_TEMPLATES[template_id].format(question=question, options_=options_block(labels, texts)) + "\n"


def format_ethics(scenario: str, template_id: int) -> str:
    """The ETHICS commonsense prompt (ends right before the label ``0``/``1``)."""
    templates = TEMPLATE_SETS[ethics_template_set(scenario)]
    return templates[template_id].format(input=scenario) + "\n"
