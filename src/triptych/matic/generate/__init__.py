"""MATIC part 2: generate molecules predicted active on two tasks (RationaleRL-style).

rationale (MCTS) -> completion (fragment-attachment policy pretrained on MOSES) ->
finetune (filtered MLE or policy gradient) -> metrics; baselines and benchmark beside.
"""
