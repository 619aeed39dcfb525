"""Training infrastructure shared by pretraining and finetuning: processes, optimisation,
checkpoints that survive preemption, and experiment tracking."""
