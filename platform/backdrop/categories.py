"""The persisted category → identifier map that travels with a model.

Ids are append-only: a new category gets the next free id and no id is ever renumbered,
so ``sks3`` keeps meaning the same category across retraining and model versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .errors import UnknownCategoryError


@dataclass
class CategoryMap:
    ids: dict[str, int] = field(default_factory=dict)

    def add(self, category: str) -> int:
        category = normalize(category)
        if category not in self.ids:
            self.ids[category] = max(self.ids.values(), default=-1) + 1
        return self.ids[category]

    def extend(self, categories) -> "CategoryMap":
        for c in categories:
            self.add(c)
        return self

    def id_of(self, category: str) -> int:
        key = normalize(category)
        if key not in self.ids:
            known = ", ".join(sorted(self.ids)) or "none"
            raise UnknownCategoryError(f"unknown category {category!r}; this model knows: {known}")
        return self.ids[key]

    def identifier(self, category: str) -> str:
        return f"sks{self.id_of(category)}"

    def __contains__(self, category: str) -> bool:
        return normalize(category) in self.ids

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def names(self) -> list[str]:
        return sorted(self.ids, key=self.ids.__getitem__)

    def to_json(self) -> str:
        return json.dumps({"ids": self.ids}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CategoryMap":
        return cls(ids={str(k): int(v) for k, v in json.loads(text)["ids"].items()})


def normalize(category: str) -> str:
    return " ".join(str(category).strip().lower().split())


@dataclass(frozen=True)
class Prompts:
    """The paper's prompt template, split into its product and background halves."""

    full: str
    foreground: str
    background: str


def build_prompts(category: str, identifier: str, extra: str | None = None) -> Prompts:
    """``"A photo of {category}, in the background of {identifier}"`` (+ free text).

    The optional free text (DreamPainter-style text + reference control) describes the
    background, so it joins the background prompt only.
    """
    fg = f"A photo of {normalize(category)}"
    bg = f"in the background of {identifier}"
    if extra and extra.strip():
        bg = f"{bg}, {extra.strip()}"
    return Prompts(full=f"{fg}, {bg}", foreground=fg, background=bg)


def plain_prompt(category: str, extra: str | None = None) -> str:
    """The plain-ControlNet baseline's prompt: ``"A photo of {category}"`` (+ free text)."""
    fg = f"A photo of {normalize(category)}"
    return f"{fg}, {extra.strip()}" if extra and extra.strip() else fg
