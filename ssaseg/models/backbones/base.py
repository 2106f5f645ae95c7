"""The contract every backbone fulfils.

    backbone(images) -> list[Tensor]
        images: (B, 3, H, W), normalised
        returns one (B, C_i, H/s_i, W/s_i) map per stage, channels-first, with
        ``backbone.out_channels[i] == C_i`` and ``backbone.out_strides[i] == s_i``.

``backbone.load_pretrained(path)`` loads a local checkpoint file (mapping key names where the
source differs) and raises with the list of missing/unexpected keys when they do not match.
"""
