"""The label value the loss skips: prompt tokens, padding, image positions, packing boundaries.

-100 is what torch's cross_entropy and transformers ignore by default, so batches built here
work with either loss unchanged.
"""
IGNORE = -100
