"""Training (above data, below cli): recipes (config.py), the generic trainer over registered tasks
(trainer.py, tasks/), the run folder's layout (run_folder.py), evaluation and its pictures."""
