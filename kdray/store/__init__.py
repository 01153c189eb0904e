"""The experiment folder on disk: its layout and files (`experiment`), each run's state
(`status`), the versions it started with (`versions`), crash-safe writes (`atomic`) and the
deployable model file (`model_file`)."""
