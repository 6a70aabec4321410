"""Two-object scenes with a stated spatial relation, bilingual captions and true boxes.

A scene draws two different emoji from the scene classes, each a square of side
``size_range`` x resolution, placed without overlap so that the first one is left of /
right of / above / below the second. Captions come from fixed templates:

    "a red apple to the left of a cat face"  /  "红苹果在猫脸的左边"

The relation is checked on the stored (tight) boxes with :func:`relation_holds`: the two
boxes are separated along the relation's axis and the centres are further apart along
that axis than across it. Scenes that fail (rare: a glyph much narrower than its square)
are redrawn, so every stored caption is true of its boxes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from PIL import Image

from .emoji_catalog import EmojiEntry
from .render import new_canvas, paste_emoji, to_rgb

# Scene classes: visually distinct colours/shapes that stay recognisable at 32 px, with
# plain Chinese names. Their order fixes the detector class ids (labels.json).
SCENE_CLASSES: Tuple[str, ...] = (
    "red apple",  # 红苹果
    "banana",  # 香蕉
    "grapes",  # 葡萄
    "watermelon",  # 西瓜
    "strawberry",  # 草莓
    "tangerine",  # 橘子
    "eggplant",  # 茄子
    "broccoli",  # 西兰花
    "carrot",  # 胡萝卜
    "cat face",  # 猫脸
    "dog face",  # 狗脸
    "frog",  # 青蛙
    "pig face",  # 猪头
    "rabbit face",  # 兔子头
    "penguin",  # 企鹅
    "fish",  # 鱼
    "octopus",  # 章鱼
    "blue heart",  # 蓝心
    "star",  # 星星
    "mushroom",  # 蘑菇
)

RELATIONS: Tuple[str, ...] = ("left", "right", "above", "below")

_EN_TEMPLATES = {
    "left": "{a} to the left of {b}",
    "right": "{a} to the right of {b}",
    "above": "{a} above {b}",
    "below": "{a} below {b}",
}
_ZH_TEMPLATES = {
    "left": "{a}在{b}的左边",
    "right": "{a}在{b}的右边",
    "above": "{a}在{b}的上面",
    "below": "{a}在{b}的下面",
}


def with_article(name_en: str) -> str:
    """'a cat face', 'an octopus' (by the first letter; good enough for emoji names)."""
    return ("an " if name_en[:1].lower() in "aeiou" else "a ") + name_en


def scene_captions(a: EmojiEntry, b: EmojiEntry, relation: str) -> Tuple[str, str]:
    """(English, Chinese) caption saying ``a`` is ``relation`` ``b``."""
    en = _EN_TEMPLATES[relation].format(a=with_article(a.name_en), b=with_article(b.name_en))
    zh = _ZH_TEMPLATES[relation].format(a=a.name_zh, b=b.name_zh)
    return en, zh


def scene_synthetic_captions(a: EmojiEntry, b: EmojiEntry, relation: str) -> Tuple[str, str]:
    """A paraphrase listing the objects in reading order (left->right, top->bottom), the
    kind of description a captioning model gives; used for caption replacement."""
    first, second = (a, b) if relation in ("left", "above") else (b, a)
    if relation in ("left", "right"):
        en = f"{with_article(first.name_en)} on the left and {with_article(second.name_en)} on the right"
        zh = f"左边是{first.name_zh}，右边是{second.name_zh}"
    else:
        en = f"{with_article(first.name_en)} at the top and {with_article(second.name_en)} at the bottom"
        zh = f"上面是{first.name_zh}，下面是{second.name_zh}"
    return en, zh


def relation_holds(box_a: Sequence[float], box_b: Sequence[float], relation: str) -> bool:
    """Whether box a is ``relation`` box b: disjoint along the relation's axis and the
    centres further apart along that axis than across it."""
    ax, ay = (box_a[0] + box_a[2]) / 2, (box_a[1] + box_a[3]) / 2
    bx, by = (box_b[0] + box_b[2]) / 2, (box_b[1] + box_b[3]) / 2
    if relation == "left":
        return box_a[2] <= box_b[0] and abs(bx - ax) > abs(by - ay)
    if relation == "right":
        return box_b[2] <= box_a[0] and abs(bx - ax) > abs(by - ay)
    if relation == "above":
        return box_a[3] <= box_b[1] and abs(by - ay) > abs(bx - ax)
    if relation == "below":
        return box_b[3] <= box_a[1] and abs(by - ay) > abs(bx - ax)
    raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")


@dataclass
class Scene:
    image: Image.Image  # RGB, resolution x resolution
    entries: Tuple[EmojiEntry, EmojiEntry]  # (a, b): the caption says a <relation> b
    boxes: List[List[int]]  # tight pixel boxes of a and b
    relation: str
    caption_en: str
    caption_zh: str
    synthetic_en: str
    synthetic_zh: str

    @property
    def labels(self) -> List[str]:
        return [e.name_en for e in self.entries]


def _place_along(rng: random.Random, resolution: int, size_first: int, size_second: int) -> Tuple[int, int]:
    """Positions on one axis of two squares, first before second, with random margins
    and gap that share the free space."""
    free = resolution - size_first - size_second
    cut1, cut2 = sorted(rng.randint(0, free) for _ in range(2))
    return cut1, cut2 + size_first


def _place_across(rng: random.Random, resolution: int, size_a: int, size_b: int, max_offset: int) -> Tuple[int, int]:
    """Positions on the other axis: close enough that the relation reads unambiguously."""
    pos_a = rng.randint(0, resolution - size_a)
    centre_a = pos_a + size_a / 2
    lo = max(0, int(centre_a - max_offset - size_b / 2 + 0.999))
    hi = min(resolution - size_b, int(centre_a + max_offset - size_b / 2))
    pos_b = rng.randint(lo, hi) if lo <= hi else min(max(round(centre_a - size_b / 2), 0), resolution - size_b)
    return pos_a, pos_b


def sample_scene(
    classes: Sequence[EmojiEntry],
    resolution: int,
    rng: random.Random,
    background: Sequence[int] = (255, 255, 255),
    size_range: Tuple[float, float] = (0.4, 0.5),
    max_tries: int = 50,
    relations: Sequence[str] = RELATIONS,
) -> Scene:
    """Draw one scene from ``classes`` (at least 2) with ``rng``, its relation one of ``relations``."""
    if len(classes) < 2:
        raise ValueError("a scene needs at least 2 classes")
    if not relations or not set(relations) <= set(RELATIONS):
        raise ValueError(f"relations must be some of {', '.join(RELATIONS)}, got {list(relations)}")
    lo, hi = size_range
    if not 0 < lo <= hi <= 0.5:
        raise ValueError(f"size_range must satisfy 0 < min <= max <= 0.5 (two must fit), got {size_range}")
    for _ in range(max_tries):
        a, b = rng.sample(list(classes), 2)
        relation = rng.choice(list(relations))
        size_a = max(1, int(rng.uniform(lo, hi) * resolution))
        size_b = max(1, int(rng.uniform(lo, hi) * resolution))
        # "a right of b" is "b left of a": place the first-in-reading-order square first.
        first_is_a = relation in ("left", "above")
        s1, s2 = (size_a, size_b) if first_is_a else (size_b, size_a)
        p1, p2 = _place_along(rng, resolution, s1, s2)
        along_a, along_b = (p1, p2) if first_is_a else (p2, p1)
        across_a, across_b = _place_across(rng, resolution, size_a, size_b, max_offset=int(0.15 * resolution))
        if relation in ("left", "right"):
            xy_a, xy_b = (along_a, across_a), (along_b, across_b)
        else:
            xy_a, xy_b = (across_a, along_a), (across_b, along_b)
        canvas = new_canvas(resolution, background)
        box_a = paste_emoji(canvas, a.png_path, xy_a[0], xy_a[1], size_a)
        box_b = paste_emoji(canvas, b.png_path, xy_b[0], xy_b[1], size_b)
        if not relation_holds(box_a, box_b, relation):
            continue
        cap_en, cap_zh = scene_captions(a, b, relation)
        syn_en, syn_zh = scene_synthetic_captions(a, b, relation)
        return Scene(to_rgb(canvas), (a, b), [box_a, box_b], relation, cap_en, cap_zh, syn_en, syn_zh)
    raise RuntimeError(f"could not place a scene at resolution {resolution} in {max_tries} tries")
