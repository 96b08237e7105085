"""Ollama: a GGUF file plus a Modelfile ready for `ollama create NAME -f Modelfile`.

Ollama's TEMPLATE is a Go template, not Jinja, so the chat template is recognised by family
(ChatML, which SmolLM2 and Qwen use; Llama 3; Mistral's [INST]) and written as the equivalent
Go template with the family's stop tokens. An unknown family gets no TEMPLATE line (Ollama then
falls back to the template in the GGUF metadata) and a note saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ft_export.gguf_check import check_gguf, checked_depth, written_gguf
from ft_export.types import (
    ExportOptions,
    ExportResult,
    ExportSource,
    Progress,
    Verification,
)


@dataclass(frozen=True)
class TemplateFamily:
    name: str
    marker: str
    """A string only this family's Jinja template contains."""
    template: str
    stops: tuple[str, ...]


FAMILIES = (
    TemplateFamily(
        "chatml",
        "<|im_start|>",
        "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n",
        ("<|im_start|>", "<|im_end|>"),
    ),
    TemplateFamily(
        "llama3",
        "<|start_header_id|>",
        "{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
        "{{ end }}{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    TemplateFamily(
        "mistral",
        "[INST]",
        '{{- range $i, $_ := .Messages }}{{- if eq .Role "user" }}[INST] '
        "{{ if and $.System (eq $i 0) }}{{ $.System }}\n\n{{ end }}{{ .Content }}[/INST]"
        '{{- else if eq .Role "assistant" }} {{ .Content }}</s>{{- end }}{{- end }}',
        ("[INST]", "[/INST]", "</s>"),
    ),
)


def template_family(chat_template: str | None) -> TemplateFamily | None:
    """The family of a Jinja chat template, or None when ft does not know it."""
    if not chat_template:
        return None
    return next((f for f in FAMILIES if f.marker in chat_template), None)


def modelfile(gguf_name: str, chat_template: str | None) -> tuple[str, list[str]]:
    """The Modelfile's text for the GGUF file `gguf_name` beside it, and notes."""
    lines = [f"FROM ./{gguf_name}"]
    notes: list[str] = []
    family = template_family(chat_template)
    if family is None:
        notes.append(
            "the chat template is of no family ft converts (ChatML, Llama 3, Mistral): the "
            "Modelfile has no TEMPLATE, so Ollama uses the GGUF's own"
        )
    else:
        lines.append(f'TEMPLATE """{family.template}"""')
        lines.extend(f'PARAMETER stop "{stop}"' for stop in family.stops)
    return "\n".join(lines) + "\n", notes


class OllamaExporter:
    name = "ollama"
    description = "a GGUF file plus a Modelfile (template, stop tokens) for `ollama create`"

    def export(
        self, source: ExportSource, out: Path, options: ExportOptions, progress: Progress
    ) -> ExportResult:
        from ft_export.building import build_export, expected_template
        from ft_export.gguf_convert import chosen_gguf_type

        gguf_type = chosen_gguf_type(options.quant, "q8_0")
        checked_depth(options)

        def write(build: Path) -> tuple[Verification | None, list[str]]:
            from ft_export.merge import load_tokenizer

            with written_gguf(source, build, gguf_type, progress) as written:
                tokenizer = written.tokenizer or load_tokenizer(source)
                template = expected_template(source, tokenizer)
                text, more = modelfile(written.path.name, template)
                (build / "Modelfile").write_text(text, encoding="utf-8")
                notes = written.notes + more
                if not options.verify:
                    return None, notes
                verification = check_gguf(source, written, gguf_type, options, progress)
            family = template_family(template)
            if family is not None:
                vocab = tokenizer.get_vocab()
                verification.checks["Modelfile stop tokens are tokens"] = all(
                    stop in vocab for stop in family.stops if stop.startswith("<|")
                )
            return verification, notes

        return build_export(out, self.name, write)
