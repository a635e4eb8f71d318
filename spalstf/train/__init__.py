"""Training the networks: one loop, and what a fit needs beside it.

- `loop`: the optimisation both networks share (AdamW with a learning-rate schedule, gradient
  clipping, the exponential moving average of the weights, early stopping on a validation
  loss, budgets of updates and seconds, checkpoints, the all-reduce under torchrun).
- `denoiser`: the diffusion network ("network") trained on the reference: its batches and loss.
- `checkpoint`: the training state written every few epochs, and resuming from it.
- `distributed`: DistributedDataParallel under torchrun.

The masked-gene network's batches and loss live with it (`spalstf.prior.masked.train`).
Nothing is imported here, so that a module needing only the loop does not load the denoiser's
training (and the prior it reads).
"""
