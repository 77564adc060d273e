"""Numbers every floor of raymh shares, written once (no imports).

- IGNORE_INDEX: the train id of pixels that are never scored nor trained on (void, padding, unknown).
- FEATURE_STRIDE: the stride of the projected features z and of the pseudo-labels (docs/method.md); crop
  sizes and overlap boxes are multiples of it, and a stride-8 cell's label is the one at its centre pixel.
"""

IGNORE_INDEX = 255
FEATURE_STRIDE = 8
