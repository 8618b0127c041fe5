import pytest

from backdrop.categories import CategoryMap, build_prompts
from backdrop.errors import UnknownCategoryError


def test_ids_are_stable_and_append_only():
    m = CategoryMap().extend(["mug", "lamp"])
    assert m.identifier("mug") == "sks0" and m.identifier("Lamp ") == "sks1"
    m2 = CategoryMap.from_json(m.to_json())
    m2.extend(["watch", "mug"])
    assert m2.ids == {"mug": 0, "lamp": 1, "watch": 2}


def test_unknown_category_is_typed():
    with pytest.raises(UnknownCategoryError, match="unknown_category: .*knows: lamp, mug"):
        CategoryMap().extend(["mug", "lamp"]).id_of("sofa")


def test_prompt_template():
    p = build_prompts("Mug", "sks3", "  on a sunny table ")
    assert p.full == "A photo of mug, in the background of sks3, on a sunny table"
    assert p.foreground == "A photo of mug"
    assert p.background == "in the background of sks3, on a sunny table"
    assert build_prompts("mug", "sks3").background == "in the background of sks3"
