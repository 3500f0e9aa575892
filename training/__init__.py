"""Training of argen's toy models on ToyShapes (`argen train-toy <what>`, jobs/train_toy.py is the command line).

common.py the shared data, schedules and weight files; classifier.py, var.py, llamagen.py, mar.py one family each.
"""
