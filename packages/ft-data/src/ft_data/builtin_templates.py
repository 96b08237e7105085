"""The built-in chat templates, in Jinja like any model's ``chat_template``.

``{% generation %}`` blocks hold each assistant turn and the end-of-turn token after it, so
the spans to train on come from one render. Registered through the ``ft.templates`` entry
point group like any plugin.
"""

from __future__ import annotations

from ft_data.templates import ChatTemplate

_TOOL_CALLS = """
{%- for call in message.tool_calls or [] -%}
{{- '<tool_call>\\n' + call.function | tojson + '\\n</tool_call>' -}}
{%- endfor -%}
"""

CHATML = (
    """{%- set ns = namespace(first=0) -%}
{%- if tools -%}
{{- '<|im_start|>system\\n' -}}
{%- if messages and messages[0].role == 'system' -%}{{- messages[0].content + '\\n\\n' -}}{%- set ns.first = 1 -%}{%- endif -%}
{{- 'You may call these tools; to call one, answer with <tool_call>{"name": ..., "arguments": ...}</tool_call>.\\n<tools>\\n' -}}
{%- for tool in tools -%}{{- tool | tojson + '\\n' -}}{%- endfor -%}
{{- '</tools><|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages[ns.first:] -%}
{{- '<|im_start|>' + message.role + '\\n' -}}
{%- if message.role == 'assistant' -%}
{%- generation -%}
{{- message.content -}}"""
    + _TOOL_CALLS
    + """{{- '<|im_end|>' -}}
{%- endgeneration -%}
{{- '\\n' -}}
{%- else -%}
{{- message.content + '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""
)

LLAMA3 = """{{- bos_token -}}
{%- if tools -%}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\nYou may call these functions; answer with {"name": ..., "parameters": ...} to call one.\\n' -}}
{%- for tool in tools -%}{{- tool | tojson + '\\n' -}}{%- endfor -%}
{{- '<|eot_id|>' -}}
{%- endif -%}
{%- for message in messages -%}
{{- '<|start_header_id|>' + ('ipython' if message.role == 'tool' else message.role) + '<|end_header_id|>\\n\\n' -}}
{%- if message.role == 'assistant' -%}
{%- generation -%}
{{- message.content -}}
{%- for call in message.tool_calls or [] -%}
{{- {'name': call.function.name, 'parameters': call.function.arguments} | tojson -}}
{%- endfor -%}
{{- '<|eot_id|>' -}}
{%- endgeneration -%}
{%- else -%}
{{- message.content + '<|eot_id|>' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}
"""

MISTRAL = (
    """{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{%- set ns.system = message.content + '\\n\\n' -%}
{%- elif message.role == 'assistant' -%}
{%- generation -%}
{{- message.content -}}"""
    + _TOOL_CALLS
    + """{{- eos_token -}}
{%- endgeneration -%}
{%- else -%}
{{- '[INST] ' + ns.system + message.content + ' [/INST]' -}}
{%- set ns.system = '' -%}
{%- endif -%}
{%- endfor -%}
"""
)

ALPACA = """{%- if not messages or messages[0].role != 'system' -%}
{{- 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'system' -%}
{{- message.content + '\\n\\n' -}}
{%- elif message.role == 'assistant' -%}
{%- generation -%}{{- message.content + eos_token -}}{%- endgeneration -%}
{{- '\\n\\n' -}}
{%- else -%}
{{- ('### Input:\\n' if message.role == 'tool' else '### Instruction:\\n') + message.content + '\\n\\n### Response:\\n' -}}
{%- endif -%}
{%- endfor -%}
"""


def chatml() -> ChatTemplate:
    """ChatML (``<|im_start|>role ... <|im_end|>``), as Qwen and SmolLM2 use; Hermes-style tools."""
    return ChatTemplate("chatml", CHATML)


def llama3() -> ChatTemplate:
    """Llama 3 headers (``<|start_header_id|>role<|end_header_id|>``), turns end with ``<|eot_id|>``."""
    return ChatTemplate("llama3", LLAMA3)


def mistral() -> ChatTemplate:
    """Mistral's ``[INST] ... [/INST]answer</s>``; a system message goes before the first instruction."""
    return ChatTemplate("mistral", MISTRAL)


def alpaca() -> ChatTemplate:
    """Stanford Alpaca's ``### Instruction:`` / ``### Response:`` prompt; answers end with eos."""
    return ChatTemplate("alpaca", ALPACA)
