"""Per-stage freezing: which parameters train, and a table of trainable vs frozen parameters per part."""

from __future__ import annotations

from torch import nn

# Parts of EveWithTeacher reported in the table, in order.
PARTS = ("vlm.llm", "vlm.patch_embed", "vlm.projector", "vlm.aligner", "teacher")


def apply_freezing(model: nn.Module, trainable: list[str]) -> None:
    """Train exactly the parameters under the given name prefixes; the teacher is always frozen.

    Args:
        model: EveWithTeacher.
        trainable: parameter-name prefixes, e.g. ["vlm.patch_embed", "vlm.projector", "vlm.aligner"].

    A prefix naming one of the ``PARTS`` that this model does not have (the aligner of a model built with
    ``align_weight: 0``) is skipped; any other prefix must match a parameter.

    Raises:
        ValueError: a prefix matches no parameter and is not a known part (a typo would otherwise silently freeze
            everything), or no parameter at all would train.
    """
    names = [n for n, _ in model.named_parameters()]
    for prefix in trainable:
        if prefix.startswith("teacher"):
            raise ValueError("the CLIP teacher is never trained (unfreezing it collapses training)")
        if prefix not in PARTS and not any(under(n, [prefix]) for n in names):
            raise ValueError(f"stage.trainable entry {prefix!r} matches no parameter; parts are {list(PARTS)}")
    if not any(under(n, trainable) for n in names):
        raise ValueError(f"stage.trainable {trainable} matches no parameter of this model: nothing would train")
    for name, p in model.named_parameters():
        p.requires_grad_(under(name, trainable))


def under(name: str, prefixes: list[str]) -> bool:
    """Whether a parameter name is one of the prefixes or lies under one (``vlm.projector`` -> ``vlm.projector.*``)."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def freezing_table(model: nn.Module) -> list[tuple[str, int, int]]:
    """(part, trainable params, total params) for each part present."""
    rows = []
    for part in PARTS:
        params = [p for n, p in model.named_parameters() if n.startswith(part + ".")]
        if params:
            rows.append((part, sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)))
    return rows


def format_freezing_table(rows: list[tuple[str, int, int]]) -> str:
    lines = [f"{'part':<18}{'trainable':>15}{'total':>15}  state"]
    for part, train, total in rows:
        state = "trained" if train == total else ("frozen" if train == 0 else "partial")
        lines.append(f"{part:<18}{train:>15,}{total:>15,}  {state}")
    train_all, total_all = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines.append(f"{'all':<18}{train_all:>15,}{total_all:>15,}")
    return "\n".join(lines)
