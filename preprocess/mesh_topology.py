"""Index groups of mediapipe's 478-point face mesh (facts of its published topology), shared by every step.

"Left"/"right" are the person's own (mediapipe's LEFT_EYE lies on the image's right in a frontal, unmirrored view).
Each *_LOOP is an ordered closed polygon.
"""

import numpy as np

N_LANDMARKS = 478

LIPS_OUTER_LOOP = (0, 37, 39, 40, 185, 61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267)
LIPS_INNER_LOOP = (13, 82, 81, 80, 191, 78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312)
LEFT_EYE_LOOP = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
RIGHT_EYE_LOOP = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_BROW_LOOP = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
RIGHT_BROW_LOOP = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
FACE_OVAL_LOOP = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
                  148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
LEFT_IRIS = (473, 474, 475, 476, 477)  # centre first
RIGHT_IRIS = (468, 469, 470, 471, 472)

# Named points.
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
MOUTH_CORNERS = (61, 291)
LEFT_EYE_CORNERS, RIGHT_EYE_CORNERS = (362, 263), (33, 133)
LEFT_EYE_LIDS, RIGHT_EYE_LIDS = ((386, 374), (385, 380), (387, 373)), ((159, 145), (158, 153), (160, 144))
NOSE_TIP, FOREHEAD, CHIN = 1, 10, 152

# Points that move rigidly with the skull: the pose template is built from these alone, so that speech and expressions
# do not tilt the head. Chosen by measurement, not by anatomy alone: over three real clips (obama, lieu, reagan), each
# candidate's scatter around the Procrustes-aligned clip mean, relative to the eye distance, was 0.003-0.006 for the nose
# (bridge, dorsum, alae), the infraorbital rims and the inner/outer eye corners (0.01-0.013), against 0.012-0.02 for the forehead
# (it moves with raised brows; its top is often hair) and the face-oval points 127/234/356/454 (silhouette points that
# slide over the cheek as the head turns). So: the 60 stillest points above the nose base, excluding the lips, jaw,
# eyelids, brows, irises and the face oval, plus the four eye corners, the nose bridge and the glabella/lower forehead
# midline (8, 9, 151, 168) for a longer lever arm in pitch. The pose step also weights each point by its scatter.
RIGID = (3, 4, 5, 6, 8, 9, 33, 45, 47, 51, 100, 101, 114, 115, 120, 121, 122, 126, 128, 131, 133, 134, 142, 151, 168,
         174, 188, 195, 196, 197, 198, 209, 217, 220, 232, 233, 236, 237, 238, 241, 244, 245, 248, 263, 275, 277, 281,
         329, 343, 348, 349, 350, 351, 355, 357, 362, 363, 399, 412, 419, 420, 437, 440, 450, 451, 452, 453, 456, 465)

# Lower face: the lips, and the jaw line below the mouth corners. These carry speech motion. Checked on the head
# templates of obama, lieu and reagan: every point lies below the subnasale (2), none is in RIGID.
JAW = (172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 58, 288, 32, 262, 140, 369, 171, 396, 175,
       199, 200, 18, 83, 313, 201, 421, 208, 428)
LOWER_FACE = tuple(sorted(set(LIPS_OUTER_LOOP) | set(LIPS_INNER_LOOP) | set(JAW)))


def polygon(points: np.ndarray, loop: tuple[int, ...]) -> np.ndarray:
    """[len(loop), 2] vertices of a loop from [478, >=2] landmarks."""
    return np.asarray(points)[list(loop), :2]
