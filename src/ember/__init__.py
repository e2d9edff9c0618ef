"""ember: train large models from one command or one YAML file."""
