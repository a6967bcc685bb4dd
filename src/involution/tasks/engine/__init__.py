"""The training engine every task shares: the run (:mod:`.loop`), its checkpoints (:mod:`.state`), run directories
(:mod:`.run_dir`), configs (:mod:`.run_config`), devices and schedules (:mod:`.runtime`), torchrun
(:mod:`.distributed`) and pictures (:mod:`.plots`). Import from the modules: this package imports nothing."""
