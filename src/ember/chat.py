"""Answer a question about an image with a VLM folder written by `ember train --task vlm`.

    from ember.chat import VLMChat
    chat = VLMChat("runs/vlm")
    print(chat.answer("photo.jpg", "What colour is the shape?"))

The prompt is built as training built it: the folder's chat template, the image's views first
in the user turn, each view as tokens_per_image image tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .config.errors import ConfigError
from .models.hf import load_tokenizer
from .tasks.vlm.images import ImageProcessor, open_image
from .tasks.vlm.model import VisionLanguageModel
from .tasks.vlm.task import IMAGE_TOKEN, PROCESSOR_FILE


class VLMChat:
    def __init__(self, folder: str):
        self.model = VisionLanguageModel.from_pretrained(folder).eval()
        self.tokenizer = load_tokenizer(folder, "model")
        settings_file = Path(folder) / PROCESSOR_FILE
        settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
        self.processor = ImageProcessor(self.model.config.image_size, settings.get("max_img_size"))
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.image_token_id != self.model.config.image_token_id:
            raise ConfigError(f"{folder}: the tokenizer's {IMAGE_TOKEN} id differs from the model's image_token_id")

    def prompt_ids(self, question: str, views: int) -> torch.Tensor:
        messages = [{"role": "user", "content": IMAGE_TOKEN + question}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        repeats = torch.where(ids == self.image_token_id, views * self.model.config.tokens_per_image, 1)
        return ids.repeat_interleave(repeats)[None]

    def answer(self, image: str, question: str, max_new_tokens: int = 32) -> str:
        pixel_values = self.processor(open_image(image))
        ids = self.prompt_ids(question, views=pixel_values.shape[0])
        new = self.model.generate(ids, pixel_values, max_new_tokens, eos_token_id=self.tokenizer.eos_token_id)
        return self.tokenizer.decode(new[0], skip_special_tokens=True).strip()
