"""One error hierarchy and one renderer for every problem a user can cause.

Every error knows what was found, where (a :class:`~comfyc.compiler.ir.core.SourceLoc`), and
how to fix it. Rendering follows compilers' format::

    examples/txt2img.cfy:12:9: error: unknown input 'stpes' of KSampler
       12 |   stpes=20,
          |   ^^^^^
    help: did you mean 'steps'?

and for JSON workflows::

    workflow.json: node #3 'KSampler', input 'steps': error[value_smaller_than_min]: ...

Validation errors also carry ComfyUI's error ``kind`` (``required_input_missing`` …) so the
server can answer in ComfyUI's ``node_errors`` shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .ir.core import SourceLoc

if TYPE_CHECKING:
    from .ir.core import Graph

__all__ = [
    "WorkflowError",
    "WorkflowErrors",
    "InputFileError",
    "DslSyntaxError",
    "SchemaError",
    "TypeMismatchError",
    "ExportError",
    "PassError",
    "render_errors",
    "node_errors",
]


#: Error types of ComfyUI's validation (``execution.validate_inputs``) and ours that name a
#: problem class users look up; shown as ``error[kind]``.
COMFY_KINDS = frozenset({
    "required_input_missing", "bad_linked_input", "return_type_mismatch",
    "invalid_input_type", "value_smaller_than_min", "value_bigger_than_max",
    "value_not_in_list", "prompt_no_outputs", "dependency_cycle", "custom_validation_failed",
    "exception_during_validation", "unreadable_file", "default_filled", "unsupported_node",
    "model_not_found", "unknown_input",
})


class WorkflowError(Exception):
    """A problem in a workflow, with its location and a fix.

    Args:
        message: What was found and what was expected, in one sentence.
        loc: Where; None when the problem is about the whole file.
        kind: ComfyUI's error type (``value_not_in_list`` …) or one of ours.
        notes: Extra facts (``note:`` lines).
        help: How to fix it (a ``help:`` line).
        details: ComfyUI's ``details`` string, when it differs from the message.
        extra: ComfyUI's ``extra_info`` fields.
        class_type: The class of the node the error is about, for ComfyUI's node_errors.
    """

    default_kind = "invalid_workflow"

    def __init__(
        self,
        message: str,
        loc: SourceLoc | None = None,
        *,
        kind: str | None = None,
        notes: Iterable[str] = (),
        help: str | None = None,
        details: str | None = None,
        extra: Mapping[str, Any] | None = None,
        class_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.class_type = class_type
        self.message = message
        self.loc = loc
        self.kind = kind or self.default_kind
        self.notes = list(notes)
        self.help = help
        self.details = details
        self.extra = dict(extra or {})

    # ----------------------------------------------------------------- render
    def render(self, sources: Mapping[str, str] | None = None, *,
               severity: str = "error") -> str:
        """Format the error for a terminal.

        Args:
            sources: File texts by path, for the source line and caret of DSL locations.
            severity: ``error``, or ``warning`` for a problem that does not stop the run.
        """
        head = f"{self.loc}: " if self.loc is not None else ""
        # ComfyUI's validation vocabulary is shown (people search for it); comfyc's own
        # kinds would only be noise.
        label = f"{severity}[{self.kind}]" if self.kind in COMFY_KINDS else severity
        lines = [f"{head}{label}: {self.message}"]
        snippet = _snippet(self.loc, sources)
        if snippet:
            lines.extend(snippet)
        lines.extend(f"note: {note}" for note in self.notes)
        if self.help:
            lines.append(f"help: {self.help}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    # ------------------------------------------------------------ ComfyUI shape
    def to_comfy(self) -> dict[str, Any]:
        """ComfyUI's error object: ``{type, message, details, extra_info}``."""
        extra = dict(self.extra)
        if self.loc is not None and self.loc.input_name and "input_name" not in extra:
            extra["input_name"] = self.loc.input_name
        return {
            "type": self.kind,
            "message": self.message,
            "details": self.details if self.details is not None else (self.help or ""),
            "extra_info": extra,
        }


class WorkflowErrors(WorkflowError):
    """Several problems found in one run (validation reports all of them at once).

    Args:
        errors: The problems, in the order to show them.
        partial: A frontend that kept going past its errors (the DSL's lowering) leaves the
            graph it built from the rest of the file here, so that ``comfyc check`` can
            validate that too and report every problem of the file at once.
        failed: Nodes of ``partial`` that lack inputs because of these errors: node id ->
            the inputs lost (``"*"``: any may be; a missing input there is no news).
    """

    def __init__(self, errors: list[WorkflowError], *, partial: Graph | None = None,
                 failed: Mapping[str, frozenset[str]] | None = None) -> None:
        first = errors[0]
        count = len(errors)
        super().__init__(
            first.message if count == 1 else f"{count} problems in the workflow",
            first.loc, kind=first.kind,
        )
        self.errors = errors
        self.partial = partial
        self.failed = dict(failed or {})

    def render(self, sources: Mapping[str, str] | None = None, *,
               severity: str = "error") -> str:
        return render_errors(self.errors, sources)


class InputFileError(WorkflowError):
    """The file cannot be read as a workflow at all (``comfyc check`` exits 2)."""

    default_kind = "unreadable_file"


class DslSyntaxError(WorkflowError):
    """The DSL text does not parse."""

    default_kind = "syntax_error"


class SchemaError(WorkflowError):
    """A node, input or value does not fit the catalogue."""

    default_kind = "invalid_prompt"


class TypeMismatchError(WorkflowError):
    """A link carries a type its input does not accept."""

    default_kind = "return_type_mismatch"


class ExportError(WorkflowError):
    """Lowering or exporting a stage failed."""

    default_kind = "export_error"


class PassError(WorkflowError):
    """An optimisation pass failed; the message names the pass and the passes before it."""

    default_kind = "pass_error"


def node_errors(errors: Iterable[WorkflowError]) -> dict[str, Any]:
    """Group errors in ComfyUI's ``node_errors`` shape (only errors tied to a node)."""
    out: dict[str, Any] = {}
    for error in errors:
        if error.loc is None or error.loc.node_id is None:
            continue
        entry = out.setdefault(error.loc.node_id, {
            "errors": [], "dependent_outputs": [], "class_type": error.class_type or "",
        })
        entry["errors"].append(error.to_comfy())
    return out


def render_errors(errors: Iterable[WorkflowError],
                  sources: Mapping[str, str] | None = None) -> str:
    """Render several errors, blank-line separated, with a count at the end."""
    errors = list(errors)
    text = "\n\n".join(e.render(sources) for e in errors)
    if len(errors) > 1:
        text += f"\n\n{len(errors)} errors"
    return text


def _snippet(loc: SourceLoc | None, sources: Mapping[str, str] | None) -> list[str]:
    if loc is None or loc.line is None or not sources or loc.file not in sources:
        return []
    text_lines = sources[loc.file].splitlines()
    if not 1 <= loc.line <= len(text_lines):
        return []
    line = text_lines[loc.line - 1].expandtabs(1)
    number = str(loc.line)
    gutter = " " * len(number)
    col = max(1, loc.col or 1)
    if loc.end_line == loc.line and loc.end_col and loc.end_col > col:
        width = loc.end_col - col
    else:
        width = 1
    width = max(1, min(width, max(1, len(line) - col + 1)))
    return [
        f" {number} | {line}",
        f" {gutter} | {' ' * (col - 1)}{'^' * width}",
    ]
