"""The experiment configs, shipped inside the package as ``fire_lightning.experiments``: a config is
found by its file name (``fire train phantom2d``) as well as by its path (``config.experiment_path``)."""
