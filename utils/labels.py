"""The label convention every package shares: :data:`IGNORE_INDEX`, the value of a pixel without
supervision, in the datasets' masks (VOC's boundary band) and in the method's pseudo labels."""

IGNORE_INDEX = 255
