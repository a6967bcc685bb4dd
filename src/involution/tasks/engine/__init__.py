"""The training engine every task shares (run, checkpoints, run directories, configs, devices, torchrun, seeding,
pictures, the Task protocol). Import from its modules: this package imports nothing."""
