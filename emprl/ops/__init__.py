"""What runs the stages: the notebook pipeline, the air-gapped GPU bundle and the playground. May import
anything below it."""
