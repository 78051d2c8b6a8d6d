"""Prompts must match the reference's templates exactly (docs/method.md §1.2)."""

import pytest

from memaudit.data.templates import (
    ETHICS_AITA_TEMPLATES,
    ETHICS_TEMPLATES,
    MCQ_TEMPLATES,
    ethics_template_set,
    format_ethics,
    format_mcq,
    options_block,
)

# Copied by hand from docs/method.md §1.2, independent of the module under test.
METHOD_MCQ = [
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
]
METHOD_AITA = [
    "{input}\n\nOPTIONS:\n- 0: Moral\n- 1: Immoral\n",
    "{input}\n\nOPTIONS:\n- 0: Ethical\n- 1: Unethical\n",
    "{input}\n\nOPTIONS:\n- 0: No\n- 1: Yes\n",
    "{input}\n\nAITA?\n\nOPTIONS:\n- 0: No\n- 1: Yes\n",
    "{input}\n\nWIBTA?\n\nOPTIONS:\n- 0: No\n- 1: Yes\n",
]
METHOD_ETHICS = [
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
]


def test_template_sets_are_the_references():
    assert list(MCQ_TEMPLATES) == METHOD_MCQ
    assert list(ETHICS_AITA_TEMPLATES) == METHOD_AITA
    assert list(ETHICS_TEMPLATES) == METHOD_ETHICS


def test_full_mcq_example_string():
    prompt = format_mcq("Which is red?", list("ABCD"), ["sky", "apple", "grass", "snow"], 0)
    assert prompt + "B" == "Which is red?\n\nOPTIONS:\n- A: sky\n- B: apple\n- C: grass\n- D: snow\n\nB"


@pytest.mark.parametrize("template_id", range(10))
def test_every_mcq_prompt_is_template_then_newline(template_id):
    labels, texts = ["1", "2", "3"], ["x", "y", "z"]
    block = "OPTIONS:\n- 1: x\n- 2: y\n- 3: z"
    prompt = format_mcq("Q?", labels, texts, template_id)
    assert prompt == METHOD_MCQ[template_id].format(question="Q?", options_=block) + "\n"
    assert prompt.endswith("\n\n")


def test_options_block_handles_five_options_and_braces_in_text():
    block = options_block(list("ABCDE"), ["{a}", "b", "c", "d", "e"])
    assert block == "OPTIONS:\n- A: {a}\n- B: b\n- C: c\n- D: d\n- E: e"
    assert format_mcq("What is {x}?", ["A"], ["{y}"], 0) == "What is {x}?\n\nOPTIONS:\n- A: {y}\n\n"


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("AITA for eating the cake? | long post", "ethics_aita"),
        ("aita for x", "ethics_aita"),
        ("WIBTA if I left?", "ethics_aita"),
        ("Wibta if I left?", "ethics_aita"),
        ("I helped an old lady across the road.", "ethics"),
        ("Was I the aita here?", "ethics"),
    ],
)
def test_ethics_template_set_by_prefix(scenario, expected):
    assert ethics_template_set(scenario) == expected


def test_ethics_prompts_match_both_sets():
    assert (
        format_ethics("I lied.", 6)
        == "I lied.\n\nHow yould you describe what I did?\n\nOPTIONS:\n- 0: Moral\n- 1: Immoral\n\n"
    )
    assert format_ethics("AITA for lying?", 3) == "AITA for lying?\n\nAITA?\n\nOPTIONS:\n- 0: No\n- 1: Yes\n\n"
    with pytest.raises(IndexError):
        format_ethics("AITA for lying?", 7)  # the AITA set has 5 templates only
