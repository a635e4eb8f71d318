"""How the base predictions become the result: the one place that decides it.

- `columns`: every base prediction of a fitted model on an ST (`ColumnSource`), predictor x
  view x readout.
- `stack`: the combination learnt on the ST's own known genes (`Stack`), with its interval.
- `intervals`: the count model of the interval (`CountInterval`), calibrated with the stack.
- `blend`: the fixed blend, the prior a chunk's samples are centred on without a stack
  (`Blend`).
- `selfcheck`: the self-check, which hides known genes in turn, predicts them with every
  column and learns the stack, its interval and the per-gene calibration from them.
- `expected`: the expected accuracy of the run carried from the self-check's hidden genes.

Nothing here fits a model: the self-check is handed the model's fitting function, so this
package imports neither the model (`spalstf.model`) nor the API. The modules are imported by
their full names; this file imports none of them.
"""
