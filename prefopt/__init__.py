"""The training core: what dpo.py, kto.py and simpo.py import, and nothing else.

Config parsing and checks, model and data loading, merging, plotting, locks, atomic outputs and user errors; plus
the few things the experiment (`experiment/`) and the benchmark (`benchmark/`) share, which they take from here:
reading a run's log history, saving a figure, Markdown tables and running a training script in a subprocess. This
package imports neither of them.
"""
