"""Generator SFT: TRL's SFTTrainer on relabeled examples, loss on the target assistant message only.

``config.GeneratorTrainConfig`` (the arguments), ``trainer`` (tokenization with exact label masks, training,
registration), ``train`` (the ``python -m trainers.sft.train`` / ``accelerate launch -m trainers.sft.train``
entry point). Heavy imports (torch, transformers, trl) happen inside the functions that need them.
"""
