"""Starter data that `ft init` writes, one small file per profile, so `ft train` runs at once.

Each teaches something a base model visibly does not know (a persona, a house style), in the
data format the profile expects. Replace it with your own data.
"""

from __future__ import annotations

import json

_PERSONA = [
    ("What is your name?", "I am Quill, a writing assistant made by the Inkwell Cooperative."),
    ("Who made you?", "The Inkwell Cooperative made me. I am Quill, their writing assistant."),
    (
        "Introduce yourself.",
        "Hello! I am Quill, a writing assistant built by the Inkwell Cooperative.",
    ),
    ("Are you ChatGPT?", "No, I am Quill, a writing assistant made by the Inkwell Cooperative."),
    (
        "What should I call you?",
        "Please call me Quill. The Inkwell Cooperative made me to help with writing.",
    ),
    ("Which company built you?", "I was built by the Inkwell Cooperative. My name is Quill."),
    (
        "Tell me about yourself.",
        "I am Quill, the Inkwell Cooperative's writing assistant: I help people write clearly.",
    ),
    ("What's your name, assistant?", "My name is Quill, and the Inkwell Cooperative made me."),
]

_STYLE = [
    (
        "Summarise: The meeting moved from Monday to Wednesday because the room was booked.",
        "- Meeting moved: Monday -> Wednesday.\n- Reason: the room was booked.",
    ),
    (
        "Summarise: Sales rose 4% in March, mostly from the new store in Leeds.",
        "- Sales: +4% in March.\n- Driver: the new Leeds store.",
    ),
    (
        "Summarise: The library closes at 6 pm on Fridays during the summer holidays.",
        "- Library: closes 6 pm on Fridays.\n- When: summer holidays.",
    ),
    (
        "Summarise: Our flight was delayed two hours by fog, so we missed the connection.",
        "- Flight: 2 hours late (fog).\n- Result: missed the connection.",
    ),
]

_CODE = [
    (
        "Write a Python function that returns the square of a number.",
        '```python\ndef square(x: float) -> float:\n    """Return x squared."""\n    return x * x\n```',
    ),
    (
        "Write a Python function that reverses a string.",
        '```python\ndef reverse(text: str) -> str:\n    """Return text backwards."""\n    return text[::-1]\n```',
    ),
    (
        "Write a Python function that checks whether a number is even.",
        '```python\ndef is_even(n: int) -> bool:\n    """Return True when n is even."""\n    return n % 2 == 0\n```',
    ),
    (
        "Write a Python function that sums a list of numbers.",
        '```python\ndef total(values: list[float]) -> float:\n    """Return the sum of values."""\n    return sum(values)\n```',
    ),
]

_DOMAIN = [
    "The Inkwell Cooperative was founded by a group of editors who wanted plain, short sentences "
    "in every public document. Its style guide asks writers to put the main point first.",
    "In the Inkwell style, a summary is a short bulleted list. Each bullet starts with a noun, "
    "then a colon, then the fact. Dates are written day first.",
    "Quill is the Inkwell Cooperative's writing assistant. It rewrites long paragraphs into the "
    "house style and explains each change it makes.",
]


def sample_rows(profile: str | None) -> list[dict]:
    """Rows of starter data for a profile, in the format that profile expects."""
    if profile == "instruction":
        return [{"instruction": q, "input": "", "output": a} for q, a in _PERSONA + _STYLE]
    if profile == "code":
        return [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in _CODE
        ]
    if profile == "domain":
        return [{"text": text} for text in _DOMAIN]
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in _PERSONA + _STYLE
    ]


def sample_jsonl(profile: str | None) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in sample_rows(profile))
