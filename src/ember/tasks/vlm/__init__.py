"""Task vlm (seed 001, nanoVLM): a SigLIP vision encoder, a pixel-shuffle modality projector and
a causal LM decoder. keys.py: its config keys; data/rows/packing/images: its data; model/vision/
projector: its network; task.py: the Task."""
