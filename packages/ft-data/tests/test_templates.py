"""Templates and loss masks, cross-checked against transformers' apply_chat_template."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ft_data.conversation import Conversation, Message
from ft_data.errors import DataError
from ft_data.formats import get_format
from ft_data.templates import ChatTemplate, available_templates, get_template
from ft_data.tokenize import tokenize_conversations, tokenize_texts
from ft_data.tokenizer import load_tokenizer

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
CHAT = Conversation(
    [
        Message("system", "Be brief."),
        Message("user", "Hi?"),
        Message("assistant", "Hello."),
        Message("user", "Bye?"),
        Message("assistant", "Bye."),
    ]
)
RENDERED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    "<|im_start|>user\nBye?<|im_end|>\n<|im_start|>assistant\nBye.<|im_end|>\n",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nBye.<|eot_id|>",
    "mistral": "<s>[INST] Be brief.\n\nHi? [/INST]Hello.</s>[INST] Bye? [/INST]Bye.</s>",
    "alpaca": "Be brief.\n\n### Instruction:\nHi?\n\n### Response:\nHello.</s>\n\n### Instruction:\nBye?\n\n### Response:\nBye.</s>\n\n",
}
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>", "alpaca": "</s>"}


@pytest.mark.parametrize("name", ["chatml", "llama3", "mistral", "alpaca"])
def test_builtin_templates_render_and_mark_every_assistant_turn(name: str) -> None:
    template = get_template(name)
    text, spans = template.render_with_spans(CHAT, SPECIAL)
    assert text == RENDERED[name]
    assert [text[start:end] for start, end in spans] == [
        f"Hello.{END_OF_TURN[name]}",
        f"Bye.{END_OF_TURN[name]}",
    ]
    assert template.render(CHAT, SPECIAL) == text
    # Without generation blocks, the prefix renders find the same spans.
    plain = ChatTemplate(
        name, template.source.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    )
    assert plain.render_with_spans(CHAT, SPECIAL) == (text, spans)


def test_templates_are_registered() -> None:
    assert available_templates() == ["alpaca", "chatml", "llama3", "mistral"]
    with pytest.raises(
        DataError,
        match=r"unknown chat template 'vicuna'\. Templates: tokenizer, alpaca, chatml, llama3, mistral",
    ):
        get_template("vicuna")
    with pytest.raises(
        DataError, match=r"the tokenizer has no chat_template\. Choose a template: alpaca, chatml"
    ):
        get_template(None, tokenizer_template=None)


def test_chatml_tools_and_tool_calls() -> None:
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2}}}
    chat = Conversation(
        [
            Message("user", "2+2?"),
            Message("assistant", "", tool_calls=[call]),
            Message("tool", "4"),
            Message("assistant", "4."),
        ],
        tools=[{"type": "function", "function": {"name": "add", "parameters": {}}}],
    )
    text, spans = get_template("chatml").render_with_spans(chat)
    assert (
        '<tools>\n{"type": "function", "function": {"name": "add", "parameters": {}}}\n</tools>'
        in text
    )
    assert [text[a:b] for a, b in spans] == [
        '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call><|im_end|>',
        "4.<|im_end|>",
    ]


def test_custom_template_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.jinja"
    path.write_text(
        "{% for m in messages %}{{ m.role | upper }}: {{ m.content }}{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    )
    template = get_template(path)
    assert template.name == "plain.jinja"
    text, spans = template.render_with_spans(CHAT, SPECIAL)
    assert (
        text
        == "SYSTEM: Be brief.\nUSER: Hi?\nASSISTANT: Hello.</s>\nUSER: Bye?\nASSISTANT: Bye.</s>\n"
    )
    assert [text[a:b] for a, b in spans] == ["Hello.</s>", "Bye.</s>"]
    path.write_text("line one\n{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    with pytest.raises(DataError, match=r"plain\.jinja, line 3: the chat template does not parse"):
        get_template(path)


def test_raise_exception_in_a_template_is_a_row_problem() -> None:
    template = ChatTemplate(
        "strict",
        "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok",
    )
    with pytest.raises(
        Exception, match="template 'strict' refused the conversation: first must be user"
    ):
        template.render(CHAT)


def _conversations(alpaca_rows: list[dict]) -> list[Conversation]:
    alpaca = get_format("alpaca")
    conversations = [alpaca.to_conversation(row) for row in alpaca_rows[:120]]
    turns = []
    for row in alpaca_rows[120:126]:  # one conversation of six turns, each answer trained
        turns += [Message("user", row["instruction"]), Message("assistant", row["output"])]
    return [*conversations, Conversation(turns)]


def test_mask_matches_transformers(
    tokenizer_dir: Path, alpaca_rows: list[dict], marked_template: str
) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_dir / "tokenizer.json"), eos_token="<|im_end|>"
    )
    tokenizer = load_tokenizer(tokenizer_dir)
    conversations = _conversations(alpaca_rows)
    own = get_template(
        None, tokenizer_template=tokenizer.chat_template
    )  # no generation blocks: prefix renders
    marked = ChatTemplate(
        "marked", marked_template
    )  # generation blocks, as transformers reads them
    by_prefix = tokenize_conversations(conversations, own, tokenizer)
    by_blocks = tokenize_conversations(conversations, marked, tokenizer)
    for conversation, prefix, blocks in zip(conversations, by_prefix, by_blocks, strict=True):
        messages = [message.to_dict() for message in conversation.messages]
        expected = hf.apply_chat_template(
            messages,
            chat_template=marked_template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        plain_ids = hf.apply_chat_template(
            messages, chat_template=tokenizer.chat_template, tokenize=True, return_dict=True
        )["input_ids"]
        assert prefix.tokens.tolist() == plain_ids == expected["input_ids"]
        assert prefix.loss_mask.tolist() == expected["assistant_masks"]
        assert blocks.tokens.tolist() == expected["input_ids"]
        assert blocks.loss_mask.tolist() == expected["assistant_masks"]


def test_mask_counts_are_the_assistant_tokens(tokenizer_dir: Path, alpaca_rows: list[dict]) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    conversations = _conversations(alpaca_rows)
    examples = tokenize_conversations(
        conversations, get_template(None, tokenizer_template=tokenizer.chat_template), tokenizer
    )
    im_end = tokenizer.eos_token_id
    for conversation, example in zip(conversations, examples, strict=True):
        answers = [m.content for m in conversation.messages if m.role == "assistant"]
        expected = sum(
            len(tokenizer.tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False).ids)
            for answer in answers
        )
        assert int(example.loss_mask.sum()) == expected
        # Each trained run is one answer followed by its end-of-turn token, in order.
        positions = np.flatnonzero(example.loss_mask)
        runs = np.split(positions, np.flatnonzero(np.diff(positions) > 1) + 1)
        decoded = [
            tokenizer.tokenizer.decode(example.tokens[run].tolist(), skip_special_tokens=False)
            for run in runs
        ]
        assert decoded == [answer + "<|im_end|>" for answer in answers]
        assert example.tokens[positions[-1]] == im_end
    everything = tokenize_conversations(
        conversations[:3], get_template("chatml"), tokenizer, train_on="all"
    )
    assert all(example.loss_mask.all() for example in everything)


def test_text_tokenization_ends_with_eos(tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    [example] = tokenize_texts(["Some text."], tokenizer)
    assert example.tokens[-1] == tokenizer.eos_token_id
    assert example.tokens[:-1].tolist() == tokenizer.tokenizer.encode("Some text.").ids
    assert example.loss_mask.all()


def test_masks_from_token_bytes_match_the_offsets(
    tokenizer_dir: Path, alpaca_rows: list[dict]
) -> None:
    """Masks found from the byte lengths of the ids (no offsets asked of the tokenizer) are
    those of the offsets, for multi-byte characters and for texts cut short; a tokenizer with
    a normalizer takes the offsets path."""
    from tokenizers import normalizers

    from ft_data.tokenize import spans_to_mask, token_byte_lengths
    from ft_data.tokenizer import ModelTokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    assert token_byte_lengths(tokenizer) is not None
    unicode = Conversation(
        [
            Message("user", "中文 café 🤖?"),
            Message("assistant", " 🤖中文 ok\n"),
            Message("user", "x"),
            Message("assistant", "é🤖"),
        ]
    )
    conversations = [*_conversations(alpaca_rows)[:40], unicode]
    template = get_template(None, tokenizer_template=tokenizer.chat_template)
    lowered = tokenizer.tokenizer.from_str(tokenizer.tokenizer.to_str())
    lowered.normalizer = normalizers.Lowercase()
    other = ModelTokenizer(lowered, "lowercased", tokenizer.chat_template, tokenizer.special_tokens)
    assert token_byte_lengths(other) is None
    for tok in (tokenizer, other):
        for max_chars in (None, 150):
            examples = tokenize_conversations(conversations, template, tok, max_chars=max_chars)
            for conversation, example in zip(conversations, examples, strict=True):
                text, spans = template.render_with_spans(conversation, tok.special_tokens)
                encoding = tok.tokenizer.encode(text[:max_chars], add_special_tokens=False)
                offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
                assert example.tokens.tolist() == encoding.ids
                assert example.loss_mask.tolist() == spans_to_mask(offsets, spans).tolist()
    unicode_mask = tokenize_conversations([unicode], template, tokenizer)[0].loss_mask
    assert 0 < int(unicode_mask.sum()) < len(unicode_mask)
