"""Text for conditioning: digit captions from labels and measured attributes, text encoders, dataset caption tables."""
from .captions import DIGIT_NAMES, CaptionThresholds, attributes, caption_words, captions
from .conditioning import CaptionTable, caption_table, class_prompts, dataset_captions, encode_prompts
from .encoders import (CLIP_PREFIX, ENCODERS, VOCABULARY, ClipTextEncoder, EncoderName, MiniLMEncoder,
                       SmallTextConfig, SmallTextEncoder, TextEncoderError, check_encoder_name, encoder_dim,
                       get_encoder, minilm_available, tokenize_words)

__all__ = ["DIGIT_NAMES", "CaptionThresholds", "attributes", "caption_words", "captions", "CaptionTable",
           "caption_table", "dataset_captions", "class_prompts", "encode_prompts", "ENCODERS", "VOCABULARY", "EncoderName",
           "MiniLMEncoder", "SmallTextConfig", "SmallTextEncoder", "TextEncoderError", "encoder_dim", "get_encoder",
           "minilm_available", "tokenize_words", "CLIP_PREFIX", "ClipTextEncoder", "check_encoder_name"]
