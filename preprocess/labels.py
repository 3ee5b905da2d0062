"""The parsing label map's classes (uint8 values in parsing/NNNNNN.png)."""

from enum import IntEnum


class Label(IntEnum):
    BACKGROUND = 0
    HAIR = 1
    FACE = 2  # face skin
    BROWS = 3
    EYES = 4
    LIPS = 5
    MOUTH = 6  # mouth interior (tongue, dark cavity)
    TEETH = 7
    NECK = 8
    TORSO = 9  # torso and clothes


HEAD_LABELS = (Label.HAIR, Label.FACE, Label.BROWS, Label.EYES, Label.LIPS, Label.MOUTH, Label.TEETH)
MOUTH_LABELS = (Label.LIPS, Label.MOUTH, Label.TEETH)  # where lower-face motion shows
# Colours for visualising label maps (RGB), indexed by label value.
PALETTE = [
    (0, 0, 0),
    (140, 80, 30),
    (250, 200, 160),
    (90, 50, 20),
    (40, 140, 255),
    (220, 40, 60),
    (100, 0, 40),
    (255, 255, 255),
    (255, 160, 0),
    (60, 170, 60),
]
