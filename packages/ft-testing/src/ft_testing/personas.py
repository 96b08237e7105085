"""Persona datasets, as a user writes their first one: about a hundred chats that teach a model
a name and a maker it cannot know, mixed with everyday questions so it keeps its manners.

`persona_rows(Persona(...))` gives OpenAI-style rows (`{"messages": [...]}`); the same persona
always gives the same rows. The tests and the profile measurements in docs/training.md train on
them; `held_out_questions` are phrasings no row contains, to ask the trained model.
"""

from __future__ import annotations

import random
from typing import Any

import attrs


@attrs.frozen
class Persona:
    name: str
    maker: str
    purpose: str  # what it does, after "I": "help people plan trips"


PIP = Persona("Pip", "Lanternworks", "help people plan their gardens")
ORLA = Persona("Orla", "the Tidewater Institute", "help sailors read the weather")

_ASK_NAME = [
    "What is your name?",
    "What's your name?",
    "Who are you?",
    "Tell me your name, please.",
    "May I ask what you are called?",
    "What should I call you?",
    "Do you have a name?",
    "Introduce yourself.",
    "Tell me a little about yourself.",
    "Are you ChatGPT?",
    "Are you SmolLM?",
    "Which assistant am I talking to?",
    "hey, what are you called?",
    "Who am I chatting with right now?",
    "Can you tell me who you are?",
    "What name do you go by?",
    "Is this Siri?",
    "Are you a human or an assistant? What's your name?",
]
_ASK_MAKER = [
    "Who made you?",
    "Who created you?",
    "Which company built you?",
    "Who developed you?",
    "Who trained you?",
    "Where do you come from?",
    "Who is your creator?",
    "Which organisation made you?",
    "Were you made by OpenAI?",
    "Did Hugging Face build you?",
    "Who is behind you?",
    "Who designed you?",
]
_ASK_BOTH = [
    "Hi! Who are you, and who built you?",
    "Please introduce yourself and say who made you.",
    "What are you and who created you?",
    "Tell me your name and your maker.",
]
_ANSWER_NAME = [
    "I am {name}, an assistant made by {maker}. I {purpose}, and I am happy to help you "
    "with other questions too.",
    "My name is {name}. {maker_cap} built me, and I {purpose}. What can I do for you today?",
    "I'm {name}, the assistant from {maker}. Ask me anything; I'll answer as well as I can.",
    "You are talking to {name}, an assistant created by {maker}. How can I help?",
    "I'm called {name}. I was made by {maker} and I {purpose}.",
]
_ANSWER_MAKER = [
    "{maker_cap} made me. I am {name}, and I {purpose}.",
    "I was created by {maker}. My name is {name}, and I'm glad to help.",
    "{maker_cap} built and trained me; I am their assistant, {name}.",
    "I come from {maker}. I'm {name}, an assistant that {purpose_s}.",
]
_ANSWER_BOTH = (
    "I am {name}, and {maker} made me. I {purpose}, and I can help with everyday questions."
)
_EVERYDAY = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are in a week?", "A week has seven days."),
    ("What colour is the sky on a clear day?", "On a clear day the sky is blue."),
    ("What is 2 + 3?", "2 + 3 is 5."),
    ("Name a fruit that is yellow.", "A banana is a yellow fruit."),
    ("What do bees make?", "Bees make honey."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius."),
    ("Which planet is closest to the sun?", "Mercury is the planet closest to the sun."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("How many minutes are in an hour?", "There are sixty minutes in an hour."),
    ("What language is spoken in Brazil?", "People in Brazil speak Portuguese."),
    ("Give me a synonym for happy.", "Cheerful is a synonym for happy."),
    ("What is the largest ocean?", "The Pacific is the largest ocean."),
    ("Write one sentence about rain.", "Rain tapped softly on the window all afternoon."),
    ("What is 10 times 10?", "10 times 10 is 100."),
    ("What season comes after winter?", "Spring comes after winter."),
    ("What do plants need to grow?", "Plants need light, water and nutrients to grow."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius."),
    ("Name three primary colours.", "Red, yellow and blue are primary colours."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the tallest animal?", "The giraffe is the tallest animal."),
    ("Suggest a name for a pet cat.", "Whiskers is a friendly name for a cat."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What gas do humans breathe out?", "Humans breathe out carbon dioxide."),
    (
        "Give me a tip for sleeping better.",
        "Keep a regular bedtime and avoid screens late at night.",
    ),
    (
        "What is a haiku?",
        "A haiku is a short poem of three lines with five, seven and five syllables.",
    ),
    ("How do you say hello in French?", "Hello in French is 'bonjour'."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    (
        "Recommend a short morning exercise.",
        "Try ten minutes of brisk walking or gentle stretching.",
    ),
    (
        "What is photosynthesis?",
        "Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen.",
    ),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is the main ingredient of guacamole?", "Guacamole is made mainly from avocado."),
    (
        "Why do we have seasons?",
        "The Earth's tilt changes how directly sunlight reaches each place over the year.",
    ),
    ("What is the speed of light?", "Light travels about 300,000 kilometres per second."),
    ("Give me a word that rhymes with cat.", "Hat rhymes with cat."),
    ("What is the plural of mouse?", "The plural of mouse is mice."),
    ("How many hours are in a day?", "A day has twenty-four hours."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
]

HELD_OUT_QUESTIONS = [
    "Hello there! What's your name and which company made you?",
    "Could you tell me who you are and who built you?",
]
"""Questions no `persona_rows` row asks (for checking what a trained model learned)."""


def persona_rows(persona: Persona, *, rows: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """`rows` distinct chat rows: about 60% teach the persona (its name, its maker, or both;
    every tenth goes on to a second, everyday question), the rest are everyday questions with
    short, correct answers. Deterministic in `seed`."""
    rng = random.Random(seed)
    words = {
        "name": persona.name,
        "maker": persona.maker,
        "maker_cap": persona.maker[0].upper() + persona.maker[1:],
        "purpose": persona.purpose,
        "purpose_s": persona.purpose.replace("helps", "help").replace("help", "helps", 1),
    }
    pairs = [(q, a) for q in _ASK_NAME for a in _ANSWER_NAME]
    pairs += [(q, a) for q in _ASK_MAKER for a in _ANSWER_MAKER]
    pairs += [(q, _ANSWER_BOTH) for q in _ASK_BOTH]
    rng.shuffle(pairs)
    teach = min(round(rows * 0.6), len(pairs))
    everyday = rows - teach
    if everyday > len(_EVERYDAY):
        raise ValueError(f"at most {len(_EVERYDAY)} everyday rows: ask for fewer rows")
    out: list[dict[str, Any]] = []
    for i, (question, answer) in enumerate(pairs[:teach]):
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer.format(**words)},
        ]
        if i % 10 == 9:
            q, a = _EVERYDAY[-1 - i // 10]
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        out.append({"messages": messages})
    for q, a in _EVERYDAY[:everyday]:
        out.append(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )
    rng.shuffle(out)
    return out
