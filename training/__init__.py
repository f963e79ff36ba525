"""The training step and loop's parts, shared by every model family (train.py assembles them).

steps           train state, the train and eval steps, jitted per config
optim           SGD + Nesterov + AGC, AdamW, decay masks, layer-wise lr decay, schedules, EMA
sam             sharpness-aware minimization as a transformation of the gradient function
mixing          MixUp / CutMix on the device
data_parallel   the step's model computation per device (shard_map) and per example (vmap)
sharding        the mesh and the shape-based sharding rules (data x FSDP)
fsdp            FSDP per layer: each layer's parameters gathered as it runs, gradients scattered
checkpoint      orbax checkpoints with checksums, run identity, restore verdicts, preemption
metric_logging  metrics.jsonl (parts on object stores), TensorBoard, console progress
distributed     multi-process start-up: launcher detection, jax.distributed, its errors
finetune        initialisation from pre-trained weights (this codebase, timm, big_vision, DeepMind)
hlo_cost        FLOPs, collectives and TPU cycle estimates read from a compiled program's HLO
compiled_cost   a compiled step's memory, FLOPs and predicted time; fits or not, and how to fit
tpu_slices      TPU slices by Cloud name, and their devices from libtpu (compile only)
"""
