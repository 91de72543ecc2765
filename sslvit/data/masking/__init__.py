from sslvit.data.masking.block import block_mask
from sslvit.data.masking.generator import MaskGenerator

__all__ = ["MaskGenerator", "block_mask"]
