"""Per-stage freezing: which parameters train, and a table of trainable vs frozen parameters per part.

A stage names what trains as parameter-name prefixes (``vlm.patch_embed``: that module and everything under it) or,
for parameters spread over many modules, as globs (``vlm.llm.*.moe_*``: EVEv2's vision experts, the ``moe_`` copies
of q/k/v/o, the MLP and both RMSNorms in every decoder layer). A glob is any entry with ``*``, ``?`` or ``[``, matched
against the whole parameter name (``fnmatch``: ``*`` also crosses dots).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

# Parts of EveWithTeacher reported in the table, in order.
PARTS = ("vlm.llm", "vlm.patch_embed", "vlm.projector", "vlm.aligner", "teacher")
# EVEv2's vision experts inside vlm.llm (reported as a row of their own when the model has them).
VISION_EXPERTS = "vlm.llm.*.moe_*"
_GLOB_CHARS = frozenset("*?[")


def apply_freezing(model: nn.Module, trainable: list[str]) -> None:
    """Train exactly the parameters under the given name prefixes or matching the given globs; never the teacher.

    Args:
        model: EveWithTeacher.
        trainable: parameter-name prefixes, e.g. ["vlm.patch_embed", "vlm.projector", "vlm.aligner"], or globs,
            e.g. ["vlm.patch_embed", "vlm.llm.*.moe_*"] (EVEv2 stage 1: patch embedding and vision experts).

    A prefix naming one of the ``PARTS`` that this model does not have (the aligner of a model built with
    ``align_weight: 0``) is skipped; any other prefix or glob must match a parameter.

    Raises:
        ValueError: an entry matches no parameter and is not a known part (a typo would otherwise silently freeze
            everything), or no parameter at all would train.
    """
    names = [n for n, _ in model.named_parameters()]
    for entry in trainable:
        if entry.startswith("teacher"):
            raise ValueError("the CLIP teacher is never trained (unfreezing it collapses training)")
        if entry not in PARTS and not any(under(n, [entry]) for n in names):
            raise ValueError(f"stage.trainable entry {entry!r} matches no parameter; parts are {list(PARTS)}")
    if not any(under(n, trainable) for n in names):
        raise ValueError(f"stage.trainable {trainable} matches no parameter of this model: nothing would train")
    for name, p in model.named_parameters():
        p.requires_grad_(under(name, trainable) and not name.startswith("teacher."))


def under(name: str, entries: list[str]) -> bool:
    """Whether a parameter name is one of the prefixes or lies under one, or matches one of the globs.

    ``vlm.projector`` -> ``vlm.projector.*``; ``vlm.llm.*.moe_*`` -> ``vlm.llm.model.layers.0.moe_mlp.up_proj.weight``.
    """
    for entry in entries:
        if _GLOB_CHARS.isdisjoint(entry):
            if name == entry or name.startswith(entry + "."):
                return True
        elif fnmatchcase(name, entry):
            return True
    return False


def freezing_table(model: nn.Module) -> list[tuple[str, int, int]]:
    """(part, trainable params, total params) for each part present; EVEv2's vision experts get a row of their own."""
    rows = []
    named = list(model.named_parameters())
    for part in PARTS:
        params = [p for n, p in named if n.startswith(part + ".")]
        if params:
            rows.append((part, sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)))
        if part == "vlm.llm":
            experts = [p for n, p in named if fnmatchcase(n, VISION_EXPERTS)]
            if experts:
                train = sum(p.numel() for p in experts if p.requires_grad)
                rows.append((" of which experts", train, sum(p.numel() for p in experts)))
    return rows


def format_freezing_table(rows: list[tuple[str, int, int]]) -> str:
    lines = [f"{'part':<18}{'trainable':>15}{'total':>15}  state"]
    for part, train, total in rows:
        state = "trained" if train == total else ("frozen" if train == 0 else "partial")
        lines.append(f"{part:<18}{train:>15,}{total:>15,}  {state}")
    top = [r for r in rows if not r[0].startswith(" ")]  # indented rows are inside another part
    train_all, total_all = sum(r[1] for r in top), sum(r[2] for r in top)
    lines.append(f"{'all':<18}{train_all:>15,}{total_all:>15,}")
    return "\n".join(lines)
