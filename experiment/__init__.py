"""The comparison experiment: DPO, KTO and SimPO trained on the demo and judged on the same held-out data.

Demo assets and their gold reward, the evaluation, the figures, the sweep, the SimPO ablation and the results
tables. It runs the training scripts and imports the training core (`prefopt`), never the benchmark.
"""
