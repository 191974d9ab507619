"""The MegaByte core: bytes in, next-byte distributions out. Knows nothing of media."""

from .checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from .config import ConfigError, FlatConfig, MegaByteConfig, config_from_dict
from .generate import BATCH_BUCKETS, Decoder, GenerationStatus, bucket_for, generate, generate_stream, stream_bytes
from .sampling import PerSample, Sampling
from .megabyte import FlatTransformer, MegaByte, build_model, compile_decoding, next_byte_loss
from .score import Scores, compile_scoring, score

__all__ = [
    "BATCH_BUCKETS", "CheckpointError", "ConfigError", "Decoder", "FlatConfig", "FlatTransformer", "GenerationStatus",
    "MegaByte", "MegaByteConfig", "PerSample", "Sampling", "Scores", "bucket_for", "build_model", "compile_decoding",
    "compile_scoring", "config_from_dict", "generate", "generate_stream", "load_checkpoint", "next_byte_loss",
    "read_config", "save_checkpoint", "score", "stream_bytes",
]
