"""Tools the model families share; free of training and sharding concerns.

registry        one name space over the families ('nfnet_f7plus', 'convnext_tiny', 'vit_C-4GF')
block_stack     repeated blocks unrolled or scanned (nn.scan), rematerialised; layout conversion
macs            MAC and parameter counter for any JAX function or Flax model
hardware        peak FLOP/s of accelerators (MFU, core hours)
weight_import   shared machinery for importing foreign checkpoints
"""
